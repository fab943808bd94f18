-- The procedures with the most late dossiers in the period: resolved late plus pending past
-- their due date (the contract's resolved_late and pending_overdue), top 10, ties broken by
-- the procedure code so the list is stable. Empty when dossier_monthly has no data.
WITH d AS (
    SELECT
        procedure_code,
        procedure_name,
        field_name,
        status IN (9, 10) AND finished_at >= $period_start AND finished_at < $period_end
            AND local_date(finished_at) > local_date(due_at) AS is_resolved_late,
        (finished_at IS NULL OR finished_at >= $period_end) AND due_at < $period_end AS is_pending_overdue
    FROM dossier
    WHERE received_month <= $period
      AND status NOT IN (1, 3)
      AND received_at < $period_end
      AND (finished_at IS NULL OR finished_at >= $period_start)
)
SELECT
    procedure_code,
    MAX(procedure_name) AS procedure_name,
    MAX(field_name) AS field_name,
    CAST(COUNT(*) AS BIGINT) AS to_process,
    CAST(SUM(CASE WHEN is_resolved_late THEN 1 ELSE 0 END) AS BIGINT) AS resolved_late,
    CAST(SUM(CASE WHEN is_pending_overdue THEN 1 ELSE 0 END) AS BIGINT) AS pending_overdue,
    CAST(SUM(CASE WHEN is_resolved_late OR is_pending_overdue THEN 1 ELSE 0 END) AS BIGINT) AS late_total
FROM d
WHERE EXISTS (SELECT 1 FROM dossier_monthly)
GROUP BY procedure_code
HAVING SUM(CASE WHEN is_resolved_late OR is_pending_overdue THEN 1 ELSE 0 END) > 0
ORDER BY late_total DESC, procedure_code
LIMIT 10
