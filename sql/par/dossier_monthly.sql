-- Monthly dossier statistics for the period [$period_start, $period_end)
-- (contract: "Monthly dossier statistics for period P"), one row per group:
--   group_kind 'province' (the whole province), 'agency', 'area', 'field' and 'level'.
-- The *_prev columns are added by parstat from what was published for the previous period
-- (`[compare]` in pipelines/monthly_par.toml).
--
-- Choices where the contract is silent, written down here:
--   * The 'area' rows leave out provincial departments (their area_code is NULL); they are
--     the 'level' row `province`. An area's name comes from sql/seeds/area.csv.
--   * A group appears only when it has a dossier to process in the period, and the table is
--     empty when nothing was received, resolved or withdrawn in the whole province: such a
--     month has no data yet (only the pending dossiers carried forward), and the report says
--     "no data" instead of printing zeros.
--   * Rates whose denominator is zero are NULL, as on_time_rate is in the contract.
WITH d AS (
    -- Every dossier that is to be processed in P: accepted, received before T1, and not
    -- finished before T0. The received_month filter only prunes partitions.
    SELECT
        agency_code,
        agency_name,
        agency_level,
        area_code,
        field_code,
        field_name,
        channel,
        received_at >= $period_start AS is_received,
        status IN (9, 10) AND finished_at >= $period_start AND finished_at < $period_end AS is_resolved,
        status = 7 AND finished_at >= $period_start AND finished_at < $period_end AS is_withdrawn,
        finished_at IS NULL OR finished_at >= $period_end AS is_pending,
        due_at < $period_end AS is_due,
        due_at IS NULL AS no_due,
        local_date(finished_at) AS finished_day,
        local_date(due_at) AS due_day,
        paid_online,
        fee_vnd > 0 AS has_fee,
        digitized
    FROM dossier
    WHERE received_month <= $period
      AND status NOT IN (1, 3)
      AND received_at < $period_end
      AND (finished_at IS NULL OR finished_at >= $period_start)
),
grouped AS (
    -- One copy of each dossier per kind of group it belongs to.
    SELECT
        k.group_kind,
        CASE k.group_kind
            WHEN 'province' THEN 'province'
            WHEN 'agency' THEN d.agency_code
            WHEN 'area' THEN d.area_code
            WHEN 'field' THEN d.field_code
            ELSE d.agency_level
        END AS group_code,
        d.*
    FROM d
    CROSS JOIN (VALUES ('province'), ('agency'), ('area'), ('field'), ('level')) AS k(group_kind)
),
counts AS (
    SELECT
        group_kind,
        group_code,
        MAX(CASE WHEN group_kind = 'agency' THEN agency_name WHEN group_kind = 'field' THEN field_name END) AS own_name,
        MAX(CASE WHEN group_kind IN ('agency', 'level') THEN agency_level END) AS agency_level,
        CAST(SUM(CASE WHEN NOT is_received THEN 1 ELSE 0 END) AS BIGINT) AS carried_over,
        CAST(SUM(CASE WHEN is_received THEN 1 ELSE 0 END) AS BIGINT) AS received,
        CAST(SUM(CASE WHEN is_received AND channel = 1 THEN 1 ELSE 0 END) AS BIGINT) AS received_in_person,
        CAST(SUM(CASE WHEN is_received AND channel = 2 THEN 1 ELSE 0 END) AS BIGINT) AS received_online,
        CAST(SUM(CASE WHEN is_received AND channel = 3 THEN 1 ELSE 0 END) AS BIGINT) AS received_postal,
        CAST(COUNT(*) AS BIGINT) AS to_process,
        CAST(SUM(CASE WHEN is_resolved THEN 1 ELSE 0 END) AS BIGINT) AS resolved,
        CAST(SUM(CASE WHEN is_resolved AND finished_day < due_day THEN 1 ELSE 0 END) AS BIGINT) AS resolved_early,
        CAST(SUM(CASE WHEN is_resolved AND (no_due OR finished_day = due_day) THEN 1 ELSE 0 END) AS BIGINT) AS resolved_on_time,
        CAST(SUM(CASE WHEN is_resolved AND finished_day > due_day THEN 1 ELSE 0 END) AS BIGINT) AS resolved_late,
        CAST(SUM(CASE WHEN is_withdrawn THEN 1 ELSE 0 END) AS BIGINT) AS withdrawn,
        CAST(SUM(CASE WHEN is_pending THEN 1 ELSE 0 END) AS BIGINT) AS pending,
        CAST(SUM(CASE WHEN is_pending AND is_due THEN 1 ELSE 0 END) AS BIGINT) AS pending_overdue,
        CAST(SUM(CASE WHEN is_received AND paid_online THEN 1 ELSE 0 END) AS BIGINT) AS received_paid_online,
        CAST(SUM(CASE WHEN is_received AND has_fee THEN 1 ELSE 0 END) AS BIGINT) AS received_with_fee,
        CAST(SUM(CASE WHEN is_received AND digitized THEN 1 ELSE 0 END) AS BIGINT) AS received_digitized
    FROM grouped
    WHERE group_code IS NOT NULL
    GROUP BY group_kind, group_code
),
votes AS (
    -- Votes cast in P, counted for the groups of the dossier they rate. A vote whose dossier
    -- is not in the warehouse counts for the province only.
    SELECT
        k.group_kind,
        CASE k.group_kind
            WHEN 'province' THEN 'province'
            WHEN 'agency' THEN x.agency_code
            WHEN 'area' THEN x.area_code
            WHEN 'field' THEN x.field_code
            ELSE x.agency_level
        END AS group_code,
        CAST(COUNT(*) AS BIGINT) AS votes,
        CAST(SUM(CASE WHEN v.level IN ('very_satisfied', 'satisfied') THEN 1 ELSE 0 END) AS BIGINT) AS votes_satisfied
    FROM satisfaction_vote v
    LEFT JOIN dossier x ON x.dossier_code = v.dossier_code
    CROSS JOIN (VALUES ('province'), ('agency'), ('area'), ('field'), ('level')) AS k(group_kind)
    WHERE v.vote_month >= $period_start_month AND v.vote_month <= $period
      AND v.voted_at >= $period_start AND v.voted_at < $period_end
    GROUP BY 1, 2
)
SELECT
    c.group_kind,
    c.group_code,
    CASE c.group_kind
        WHEN 'province' THEN 'Toàn tỉnh'
        WHEN 'area' THEN COALESCE(a.area_name, c.group_code)
        WHEN 'level' THEN CASE c.group_code
            WHEN 'province' THEN 'Sở, ban, ngành'
            WHEN 'district' THEN 'Huyện, thị xã, thành phố'
            ELSE 'Xã, phường, thị trấn'
        END
        ELSE c.own_name
    END AS group_name,
    c.agency_level,
    c.carried_over,
    c.received,
    c.received_in_person,
    c.received_online,
    c.received_postal,
    c.to_process,
    c.resolved,
    c.resolved_early,
    c.resolved_on_time,
    c.resolved_late,
    c.withdrawn,
    c.pending,
    c.pending_overdue,
    c.pending - c.pending_overdue AS pending_within,
    CASE WHEN c.resolved = 0 THEN NULL
         ELSE (c.resolved_early + c.resolved_on_time) * 100.0 / c.resolved END AS on_time_rate,
    (c.resolved_late + c.pending_overdue) * 100.0 / c.to_process AS overdue_rate,
    CASE WHEN c.received = 0 THEN NULL ELSE c.received_online * 100.0 / c.received END AS online_rate,
    CASE WHEN c.received_with_fee = 0 THEN NULL
         ELSE c.received_paid_online * 100.0 / c.received_with_fee END AS online_payment_rate,
    CASE WHEN c.received = 0 THEN NULL ELSE c.received_digitized * 100.0 / c.received END AS digitized_rate,
    (c.resolved_early + c.resolved_on_time + c.withdrawn + (c.pending - c.pending_overdue))
        * 20.0 / c.to_process AS progress_score,
    COALESCE(v.votes, 0) AS votes,
    CASE WHEN COALESCE(v.votes, 0) = 0 THEN NULL
         ELSE v.votes_satisfied * 100.0 / v.votes END AS satisfaction_rate
FROM (
    -- The province's activity on every row, by a window over the few grouped rows: joining
    -- `counts` to itself would have the engine, which inlines a CTE at each use, scan the
    -- dossiers twice.
    SELECT counts.*,
           MAX(CASE WHEN group_kind = 'province' THEN received + resolved + withdrawn END)
               OVER () AS activity
    FROM counts
) c
LEFT JOIN votes v ON v.group_kind = c.group_kind AND v.group_code = c.group_code
LEFT JOIN area a ON c.group_kind = 'area' AND a.area_code = c.group_code
WHERE c.activity > 0
ORDER BY
    CASE c.group_kind WHEN 'province' THEN 0 WHEN 'level' THEN 1 WHEN 'agency' THEN 2 WHEN 'area' THEN 3 ELSE 4 END,
    c.group_code
