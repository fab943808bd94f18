-- Citizens' satisfaction votes cast in the period, by agency of the rated dossier, with the
-- province first (contract: satisfaction_rate = votes at level very_satisfied or satisfied
-- / all votes in P × 100). A vote whose dossier is not in the warehouse counts for the
-- province only.
WITH v AS (
    SELECT
        v.level,
        x.agency_code,
        x.agency_name,
        x.agency_level
    FROM satisfaction_vote v
    LEFT JOIN dossier x ON x.dossier_code = v.dossier_code
    WHERE v.vote_month >= $period_start_month AND v.vote_month <= $period
      AND v.voted_at >= $period_start AND v.voted_at < $period_end
),
by_group AS (
    -- Each vote once for the province and once for its dossier's agency. A CROSS JOIN rather
    -- than a UNION ALL of two selections from v: the engine inlines a CTE at each use, and the
    -- vote -> dossier join (a scan of every dossier) would run twice.
    SELECT
        k.group_kind,
        CASE k.group_kind WHEN 'province' THEN 'province' ELSE v.agency_code END AS group_code,
        CASE k.group_kind WHEN 'province' THEN 'Toàn tỉnh' ELSE v.agency_name END AS group_name,
        CASE k.group_kind WHEN 'province' THEN CAST(NULL AS VARCHAR) ELSE v.agency_level END AS agency_level,
        v.level
    FROM v
    CROSS JOIN (VALUES ('province'), ('agency')) AS k(group_kind)
    WHERE k.group_kind = 'province' OR v.agency_code IS NOT NULL
)
SELECT
    group_kind,
    group_code,
    MAX(group_name) AS group_name,
    MAX(agency_level) AS agency_level,
    CAST(COUNT(*) AS BIGINT) AS votes,
    CAST(SUM(CASE WHEN level = 'very_satisfied' THEN 1 ELSE 0 END) AS BIGINT) AS very_satisfied,
    CAST(SUM(CASE WHEN level = 'satisfied' THEN 1 ELSE 0 END) AS BIGINT) AS satisfied,
    CAST(SUM(CASE WHEN level = 'neutral' THEN 1 ELSE 0 END) AS BIGINT) AS neutral,
    CAST(SUM(CASE WHEN level = 'dissatisfied' THEN 1 ELSE 0 END) AS BIGINT) AS dissatisfied,
    SUM(CASE WHEN level IN ('very_satisfied', 'satisfied') THEN 1 ELSE 0 END) * 100.0 / COUNT(*)
        AS satisfaction_rate
FROM by_group
GROUP BY group_kind, group_code
ORDER BY CASE group_kind WHEN 'province' THEN 0 ELSE 1 END, satisfaction_rate DESC, group_code
