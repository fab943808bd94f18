-- The province's PAR Index over the years, up to the latest rating year not after the
-- period's year: total points, rank of rank_of provinces, the change of rank since the year
-- before and since the first year (positive = places gained: rank 27 -> 12 is +15).
WITH t AS (
    SELECT year, subject_name, score, rank, rank_of
    FROM rating
    WHERE index_kind = 'PAR'
      AND subject_type = 'province'
      AND criterion_code = 'TOTAL'
      AND year <= $period_year
),
first AS (
    SELECT rank AS first_rank, year AS first_year FROM t ORDER BY year LIMIT 1
)
SELECT
    t.year,
    t.subject_name,
    t.score,
    t.rank,
    t.rank_of,
    LAG(t.rank) OVER (ORDER BY t.year) - t.rank AS rank_change,
    first.first_year,
    first.first_rank - t.rank AS rank_change_since_first,
    t.score - LAG(t.score) OVER (ORDER BY t.year) AS score_change
FROM t CROSS JOIN first
ORDER BY t.year
