-- Monthly investment statistics (contract: "Monthly investment statistics for period P"),
-- for the period and for the year to date (1 January of P's year to the end of P: columns
-- prefixed ytd_), one row per group: group_kind 'province', 'sector', 'area', 'issuer',
-- 'zone' and 'capital_source'. Amounts in VND (Decimal), FDI capital also in USD.
-- The *_prev columns are added by parstat from what was published for the previous period.
--
-- Choices where the contract is silent, written down here:
--   * A project is grouped by the attributes of its latest certificate event before the end
--     of P (sector, area, issuer, zone, capital source), for every measure.
--   * adjusted_projects counts capital-change events (two in one month count twice).
--   * Projects outside any economic zone or industrial park have no 'zone' row.
--   * disbursement_rate is NULL for a group without valid capital.
WITH projects AS (
    -- One pass over the events before the end of P: each project's latest certificate
    -- (highest version) and its flows in P and in the year to date.
    SELECT
        project_code,
        last_value(event_type ORDER BY version) AS event_type,
        last_value(registered_capital_vnd ORDER BY version) AS registered_capital_vnd,
        last_value(sector_code ORDER BY version) AS sector_code,
        last_value(sector_name ORDER BY version) AS sector_name,
        last_value(area_code ORDER BY version) AS area_code,
        last_value(issuer ORDER BY version) AS issuer,
        last_value(zone ORDER BY version) AS zone,
        last_value(capital_source ORDER BY version) AS capital_source,
        -- in P
        SUM(CASE WHEN event_date >= $period_start_date AND event_type = 'new' THEN 1 ELSE 0 END) AS new_projects,
        SUM(CASE WHEN event_date >= $period_start_date AND event_type = 'new' THEN registered_capital_vnd END) AS new_capital_vnd,
        SUM(CASE WHEN event_date >= $period_start_date AND event_type = 'new' THEN registered_capital_usd END) AS new_capital_usd,
        SUM(CASE WHEN event_date >= $period_start_date AND event_type IN ('capital_increase', 'capital_decrease') THEN 1 ELSE 0 END) AS adjusted_projects,
        SUM(CASE WHEN event_date >= $period_start_date AND event_type IN ('capital_increase', 'capital_decrease') THEN capital_change_vnd END) AS capital_change_vnd,
        SUM(CASE WHEN event_date >= $period_start_date AND event_type IN ('terminated', 'revoked') THEN 1 ELSE 0 END) AS ended_projects,
        SUM(CASE WHEN event_date >= $period_start_date AND event_type IN ('terminated', 'revoked') THEN registered_capital_vnd END) AS ended_capital_vnd,
        -- year to date
        SUM(CASE WHEN event_date >= $year_start_date AND event_type = 'new' THEN 1 ELSE 0 END) AS ytd_new_projects,
        SUM(CASE WHEN event_date >= $year_start_date AND event_type = 'new' THEN registered_capital_vnd END) AS ytd_new_capital_vnd,
        SUM(CASE WHEN event_date >= $year_start_date AND event_type = 'new' THEN registered_capital_usd END) AS ytd_new_capital_usd,
        SUM(CASE WHEN event_date >= $year_start_date AND event_type IN ('capital_increase', 'capital_decrease') THEN 1 ELSE 0 END) AS ytd_adjusted_projects,
        SUM(CASE WHEN event_date >= $year_start_date AND event_type IN ('capital_increase', 'capital_decrease') THEN capital_change_vnd END) AS ytd_capital_change_vnd,
        SUM(CASE WHEN event_date >= $year_start_date AND event_type IN ('terminated', 'revoked') THEN 1 ELSE 0 END) AS ytd_ended_projects,
        SUM(CASE WHEN event_date >= $year_start_date AND event_type IN ('terminated', 'revoked') THEN registered_capital_vnd END) AS ytd_ended_capital_vnd
    FROM investment_event
    WHERE event_date < $period_end_date
    GROUP BY project_code
),
disbursed AS (
    -- Each project's latest cumulative disbursement reported up to P.
    SELECT project_code, last_value(disbursed_cumulative_vnd ORDER BY report_month) AS disbursed_cumulative_vnd
    FROM investment_disbursement
    WHERE report_month <= $period
    GROUP BY project_code
),
facts AS (
    SELECT
        p.*,
        p.event_type NOT IN ('terminated', 'revoked') AS is_valid,
        d.disbursed_cumulative_vnd
    FROM projects p
    LEFT JOIN disbursed d ON d.project_code = p.project_code
),
kinds AS (
    -- Each project once per kind of group (unnest is cheaper than a cross join here).
    SELECT facts.*, unnest(['province', 'sector', 'area', 'issuer', 'zone', 'capital_source']) AS group_kind
    FROM facts
),
grouped AS (
    SELECT
        kinds.*,
        CASE group_kind
            WHEN 'province' THEN 'province'
            WHEN 'sector' THEN sector_code
            WHEN 'area' THEN area_code
            WHEN 'issuer' THEN issuer
            WHEN 'zone' THEN zone
            ELSE capital_source
        END AS group_code
    FROM kinds
),
agg AS (
    SELECT
        group_kind,
        group_code,
        MAX(CASE WHEN group_kind = 'sector' THEN sector_name END) AS sector_name,
        CAST(COALESCE(SUM(new_projects), 0) AS BIGINT) AS new_projects,
        COALESCE(SUM(new_capital_vnd), 0) AS new_capital_vnd,
        CAST(COALESCE(SUM(CASE WHEN capital_source = 'domestic' THEN new_projects END), 0) AS BIGINT) AS new_projects_domestic,
        COALESCE(SUM(CASE WHEN capital_source = 'domestic' THEN new_capital_vnd END), 0) AS new_capital_domestic_vnd,
        CAST(COALESCE(SUM(CASE WHEN capital_source = 'fdi' THEN new_projects END), 0) AS BIGINT) AS new_projects_fdi,
        COALESCE(SUM(CASE WHEN capital_source = 'fdi' THEN new_capital_vnd END), 0) AS new_capital_fdi_vnd,
        COALESCE(SUM(CASE WHEN capital_source = 'fdi' THEN new_capital_usd END), 0) AS new_capital_fdi_usd,
        CAST(COALESCE(SUM(adjusted_projects), 0) AS BIGINT) AS adjusted_projects,
        COALESCE(SUM(capital_change_vnd), 0) AS capital_change_vnd,
        CAST(COALESCE(SUM(ended_projects), 0) AS BIGINT) AS ended_projects,
        COALESCE(SUM(ended_capital_vnd), 0) AS ended_capital_vnd,
        CAST(COALESCE(SUM(ytd_new_projects), 0) AS BIGINT) AS ytd_new_projects,
        COALESCE(SUM(ytd_new_capital_vnd), 0) AS ytd_new_capital_vnd,
        CAST(COALESCE(SUM(CASE WHEN capital_source = 'domestic' THEN ytd_new_projects END), 0) AS BIGINT) AS ytd_new_projects_domestic,
        COALESCE(SUM(CASE WHEN capital_source = 'domestic' THEN ytd_new_capital_vnd END), 0) AS ytd_new_capital_domestic_vnd,
        CAST(COALESCE(SUM(CASE WHEN capital_source = 'fdi' THEN ytd_new_projects END), 0) AS BIGINT) AS ytd_new_projects_fdi,
        COALESCE(SUM(CASE WHEN capital_source = 'fdi' THEN ytd_new_capital_vnd END), 0) AS ytd_new_capital_fdi_vnd,
        COALESCE(SUM(CASE WHEN capital_source = 'fdi' THEN ytd_new_capital_usd END), 0) AS ytd_new_capital_fdi_usd,
        CAST(COALESCE(SUM(ytd_adjusted_projects), 0) AS BIGINT) AS ytd_adjusted_projects,
        COALESCE(SUM(ytd_capital_change_vnd), 0) AS ytd_capital_change_vnd,
        CAST(COALESCE(SUM(ytd_ended_projects), 0) AS BIGINT) AS ytd_ended_projects,
        COALESCE(SUM(ytd_ended_capital_vnd), 0) AS ytd_ended_capital_vnd,
        CAST(SUM(CASE WHEN is_valid THEN 1 ELSE 0 END) AS BIGINT) AS valid_projects,
        COALESCE(SUM(CASE WHEN is_valid THEN registered_capital_vnd END), 0) AS valid_capital_vnd,
        COALESCE(SUM(CASE WHEN is_valid THEN disbursed_cumulative_vnd END), 0) AS disbursed_vnd
    FROM grouped
    WHERE group_code IS NOT NULL
    GROUP BY group_kind, group_code
)
SELECT
    agg.group_kind,
    agg.group_code,
    CASE agg.group_kind
        WHEN 'province' THEN 'Toàn tỉnh'
        WHEN 'sector' THEN agg.sector_name
        WHEN 'area' THEN COALESCE(a.area_name, agg.group_code)
        WHEN 'issuer' THEN CASE agg.group_code
            WHEN 'dpi' THEN 'Sở Kế hoạch và Đầu tư'
            WHEN 'ezone' THEN 'Ban Quản lý Khu kinh tế tỉnh'
            ELSE agg.group_code END
        WHEN 'capital_source' THEN CASE agg.group_code
            WHEN 'domestic' THEN 'Đầu tư trong nước'
            WHEN 'fdi' THEN 'Đầu tư trực tiếp nước ngoài (FDI)'
            ELSE agg.group_code END
        ELSE agg.group_code
    END AS group_name,
    agg.new_projects, agg.new_capital_vnd,
    agg.new_projects_domestic, agg.new_capital_domestic_vnd,
    agg.new_projects_fdi, agg.new_capital_fdi_vnd, agg.new_capital_fdi_usd,
    agg.adjusted_projects, agg.capital_change_vnd,
    agg.ended_projects, agg.ended_capital_vnd,
    agg.ytd_new_projects, agg.ytd_new_capital_vnd,
    agg.ytd_new_projects_domestic, agg.ytd_new_capital_domestic_vnd,
    agg.ytd_new_projects_fdi, agg.ytd_new_capital_fdi_vnd, agg.ytd_new_capital_fdi_usd,
    agg.ytd_adjusted_projects, agg.ytd_capital_change_vnd,
    agg.ytd_ended_projects, agg.ytd_ended_capital_vnd,
    agg.valid_projects, agg.valid_capital_vnd, agg.disbursed_vnd,
    CASE WHEN agg.valid_capital_vnd = 0 THEN NULL
         ELSE CAST(agg.disbursed_vnd AS DOUBLE) * 100.0 / CAST(agg.valid_capital_vnd AS DOUBLE)
    END AS disbursement_rate
FROM agg
LEFT JOIN area a ON agg.group_kind = 'area' AND a.area_code = agg.group_code
ORDER BY
    CASE agg.group_kind WHEN 'province' THEN 0 WHEN 'capital_source' THEN 1 WHEN 'issuer' THEN 2
         WHEN 'zone' THEN 3 WHEN 'sector' THEN 4 ELSE 5 END,
    agg.group_code
