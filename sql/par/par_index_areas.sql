-- The eight areas of the province's PAR Index in the latest rating year not after the
-- period's year, with the year before for comparison. Maximum points are data: they
-- changed with the methodology.
WITH latest AS (
    SELECT MAX(year) AS year
    FROM rating
    WHERE index_kind = 'PAR' AND subject_type = 'province' AND year <= $period_year
),
a AS (
    SELECT r.year, r.criterion_code, r.criterion_name, r.max_score, r.score
    FROM rating r
    WHERE r.index_kind = 'PAR' AND r.subject_type = 'province' AND r.criterion_code <> 'TOTAL'
)
SELECT
    cur.year,
    cur.criterion_code,
    cur.criterion_name,
    cur.max_score,
    cur.score,
    cur.score * 100.0 / cur.max_score AS score_share,
    prev.score AS score_prev_year,
    prev.max_score AS max_score_prev_year
FROM a cur
JOIN latest ON cur.year = latest.year
LEFT JOIN a prev ON prev.year = cur.year - 1 AND prev.criterion_code = cur.criterion_code
ORDER BY cur.criterion_code
