-- Projects granted their first certificate in the period, largest first.
SELECT
    e.project_code,
    e.project_name,
    e.investor_name,
    e.investor_country,
    e.capital_source,
    e.issuer,
    e.sector_code,
    e.sector_name,
    e.area_code,
    COALESCE(a.area_name, e.area_code) AS area_name,
    e.zone,
    e.event_date,
    e.registered_capital_vnd,
    e.registered_capital_usd,
    e.land_area_ha
FROM investment_event e
LEFT JOIN area a ON a.area_code = e.area_code
WHERE e.event_type = 'new'
  AND e.event_date >= $period_start_date AND e.event_date < $period_end_date
ORDER BY e.registered_capital_vnd DESC, e.project_code
