-- The procedures with the most late dossiers in the period: resolved late plus pending past
-- their due date (the contract's resolved_late and pending_overdue), top 10, ties broken by
-- the procedure code so the list is stable.
--
-- Empty when nothing was received, resolved or withdrawn in the whole province in the period:
-- the rule by which dossier_monthly says "no data", applied here to this file's own scan, so
-- that the two files run side by side instead of one after the other.
WITH d AS (
    SELECT
        procedure_code,
        procedure_name,
        field_name,
        received_at >= $period_start
            OR (status IN (7, 9, 10) AND finished_at >= $period_start AND finished_at < $period_end) AS is_activity,
        status IN (9, 10) AND finished_at >= $period_start AND finished_at < $period_end
            AND local_date(finished_at) > local_date(due_at) AS is_resolved_late,
        (finished_at IS NULL OR finished_at >= $period_end) AND due_at < $period_end AS is_pending_overdue
    FROM dossier
    WHERE received_month <= $period
      AND status NOT IN (1, 3)
      AND received_at < $period_end
      AND (finished_at IS NULL OR finished_at >= $period_start)
),
per_procedure AS (
    SELECT
        procedure_code,
        MAX(procedure_name) AS procedure_name,
        MAX(field_name) AS field_name,
        CAST(COUNT(*) AS BIGINT) AS to_process,
        CAST(SUM(CASE WHEN is_resolved_late THEN 1 ELSE 0 END) AS BIGINT) AS resolved_late,
        CAST(SUM(CASE WHEN is_pending_overdue THEN 1 ELSE 0 END) AS BIGINT) AS pending_overdue,
        CAST(SUM(CASE WHEN is_resolved_late OR is_pending_overdue THEN 1 ELSE 0 END) AS BIGINT) AS late_total,
        SUM(CASE WHEN is_activity THEN 1 ELSE 0 END) AS activity
    FROM d
    GROUP BY procedure_code
)
SELECT procedure_code, procedure_name, field_name, to_process, resolved_late, pending_overdue, late_total
FROM (
    -- The province's activity on every procedure's row, by a window over the few grouped rows.
    SELECT per_procedure.*, SUM(activity) OVER () AS province_activity
    FROM per_procedure
) p
WHERE province_activity > 0 AND late_total > 0
ORDER BY late_total DESC, procedure_code
LIMIT 10
