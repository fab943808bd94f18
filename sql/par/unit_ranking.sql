-- The province's own ranking of its departments and of its districts (until 2024) or
-- communes (from 2025), latest rating year not after the period's year: score, rank, and the
-- change since the year before (positive = places gained; NULL for a unit not ranked then).
WITH u AS (
    SELECT year, subject_type, subject_code, subject_name, score, rank, rank_of
    FROM rating
    WHERE index_kind = 'UNIT_PAR' AND criterion_code = 'TOTAL' AND year <= $period_year
),
latest AS (SELECT MAX(year) AS year FROM u)
SELECT
    cur.year,
    cur.subject_type,
    cur.subject_code,
    cur.subject_name,
    cur.score,
    cur.rank,
    cur.rank_of,
    prev.rank AS rank_prev_year,
    prev.rank - cur.rank AS rank_change,
    cur.score - prev.score AS score_change
FROM u cur
JOIN latest ON cur.year = latest.year
LEFT JOIN u prev
    ON prev.year = cur.year - 1
   AND prev.subject_type = cur.subject_type
   AND prev.subject_code = cur.subject_code
ORDER BY
    CASE cur.subject_type WHEN 'department' THEN 0 WHEN 'district' THEN 1 ELSE 2 END,
    cur.rank,
    cur.subject_code
