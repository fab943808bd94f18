-- The province over the last 12 periods, for the trend charts: the 11 before this one as
-- they were published (published_dossier_monthly), then this period as just computed.
-- A period that was never published is missing here; `parstat backfill` publishes history.
SELECT period, received, resolved, on_time_rate, online_rate
FROM published_dossier_monthly
WHERE group_kind = 'province'
  AND period_rule = $period_rule
  AND period >= $trend_from AND period < $period
UNION ALL
SELECT CAST($period AS VARCHAR) AS period, received, resolved, on_time_rate, online_rate
FROM dossier_monthly
WHERE group_kind = 'province'
ORDER BY period
