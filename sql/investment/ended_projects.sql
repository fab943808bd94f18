-- Projects terminated or revoked in the period, with their registered capital at the end.
SELECT
    e.project_code,
    e.project_name,
    e.investor_name,
    e.investor_country,
    e.capital_source,
    e.issuer,
    e.sector_name,
    e.area_code,
    COALESCE(a.area_name, e.area_code) AS area_name,
    e.zone,
    e.event_type,
    e.event_date,
    e.registered_capital_vnd
FROM investment_event e
LEFT JOIN area a ON a.area_code = e.area_code
WHERE e.event_type IN ('terminated', 'revoked')
  AND e.event_date >= $period_start_date AND e.event_date < $period_end_date
ORDER BY e.event_date, e.project_code
