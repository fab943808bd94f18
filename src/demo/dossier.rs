//! Dossiers of the one-stop-shop system, generated day by day so that memory stays bounded
//! whatever the count: receipts on working days and hours, due dates in working days, a few
//! percent late, some pending past due, online share rising over the years, the 2025
//! reorganisation, and receipts on both sides of local midnight at month ends.

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::calendar::{add_working_days, is_working_day, next_working_day};
use super::people::{self, Applicant};
use super::province::{self, Agency, Handler, Level, Procedure};

/// The kinds of malformed rows real exports contain (`--bad-rows`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BadKind {
    MissingDate,
    UnknownStatus,
    FinishBeforeReceipt,
    BrokenEncoding,
}

impl BadKind {
    pub const ALL: [BadKind; 4] = [
        BadKind::MissingDate,
        BadKind::UnknownStatus,
        BadKind::FinishBeforeReceipt,
        BadKind::BrokenEncoding,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BadKind::MissingDate => "missing_date",
            BadKind::UnknownStatus => "unknown_status",
            BadKind::FinishBeforeReceipt => "finish_before_receipt",
            BadKind::BrokenEncoding => "broken_encoding",
        }
    }
}

/// One dossier in its latest state as of the export. Times are local (no offset), as the
/// one-stop-shop system stores them.
pub struct Dossier {
    pub code: String,
    /// The day it was received (kept even when a bad row loses `received_at`).
    pub day: NaiveDate,
    pub procedure: usize,
    pub agency: usize,
    pub channel: u8,
    pub applicant_type: u8,
    pub applicant: Applicant,
    pub status: u8,
    pub submitted_at: Option<NaiveDateTime>,
    pub received_at: Option<NaiveDateTime>,
    pub due_at: Option<NaiveDateTime>,
    pub finished_at: Option<NaiveDateTime>,
    pub returned_at: Option<NaiveDateTime>,
    /// (requested, supplied) for each supplement request.
    pub supplements: Vec<(NaiveDateTime, Option<NaiveDateTime>)>,
    pub fee_vnd: i64,
    /// 0 not paid online, 1 via the national portal, 2 via the province's payment platform.
    pub paid_online: u8,
    pub digitized: bool,
    pub vneid_verified: bool,
    pub updated_at: NaiveDateTime,
    pub bad: Option<BadKind>,
    /// (voted_at, level 1 very satisfied .. 4 dissatisfied)
    pub vote: Option<(NaiveDateTime, u8)>,
}

pub struct Catalogue {
    pub agencies: Vec<Agency>,
    pub procedures: Vec<Procedure>,
}

impl Catalogue {
    pub fn new() -> Self {
        Catalogue {
            agencies: province::agencies(),
            procedures: province::procedures(),
        }
    }

    /// The fields (code, name) of the procedures, once each, sorted by code.
    pub fn fields(&self) -> Vec<(&'static str, &'static str)> {
        let mut fields: Vec<(&str, &str)> = self
            .procedures
            .iter()
            .map(|p| (p.field_code, p.field_name))
            .collect();
        fields.sort();
        fields.dedup_by_key(|f| f.0);
        fields
    }
}

impl Default for Catalogue {
    fn default() -> Self {
        Self::new()
    }
}

pub fn first_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2019, 1, 1).expect("valid date")
}

fn at(d: NaiveDate, h: u32, m: u32, s: u32) -> NaiveDateTime {
    d.and_time(NaiveTime::from_hms_opt(h, m, s).expect("valid time"))
}

/// Years since 2019-01-01, as a fraction: drives the slow trends.
fn years_in(d: NaiveDate) -> f64 {
    (d - first_day()).num_days() as f64 / 365.25
}

/// Share of online dossiers among procedures that allow it: about 10% in 2019, over 60% in 2026.
fn online_share(d: NaiveDate) -> f64 {
    let t = (years_in(d) / 7.8).clamp(0.0, 1.0);
    let jump = if d >= province::reorganisation() {
        0.05
    } else {
        0.0
    };
    (0.06 + 0.57 * t.powf(1.25) + jump).min(0.9)
}

/// How many dossiers each day receives: exactly `total` over the days, by weights.
fn day_counts(days: &[NaiveDate], total: u64) -> Vec<u64> {
    let weights: Vec<f64> = days
        .iter()
        .map(|&d| {
            let growth = 1.0 + 0.08 * years_in(d);
            let base = if is_working_day(d) { 1.0 } else { 0.07 };
            // Month ends are busy: people finish paperwork before the month closes.
            let month_end = if (d + Duration::days(1)).day() == 1 {
                1.2
            } else {
                1.0
            };
            base * growth * month_end
        })
        .collect();
    let sum: f64 = weights.iter().sum();
    let mut counts = Vec::with_capacity(days.len());
    let mut acc = 0.0;
    let mut given = 0u64;
    for w in &weights {
        acc += w;
        let upto = ((acc / sum) * total as f64).round() as u64;
        counts.push(upto.min(total) - given);
        given = upto.min(total);
    }
    if let Some(last) = counts.last_mut() {
        *last += total - given;
    }
    // Every month-end and month-start day gets at least two dossiers, for the midnight edges.
    let mut i = 0;
    while i < days.len() {
        let d = days[i];
        let edge = d.day() == 1 || (d + Duration::days(1)).day() == 1;
        if edge && counts[i] < 2 {
            let need = 2 - counts[i];
            if let Some((j, _)) = counts
                .iter()
                .enumerate()
                .filter(|(j, c)| **c >= need + 2 && *j != i)
                .max_by_key(|(_, c)| **c)
            {
                counts[j] -= need;
                counts[i] += need;
            }
        }
        i += 1;
    }
    counts
}

/// Generates dossiers received from 2019-01-01 to `until` (inclusive), as of `as_of`.
pub struct DossierGen<'a> {
    cat: &'a Catalogue,
    rng: ChaCha8Rng,
    days: Vec<NaiveDate>,
    counts: Vec<u64>,
    day_index: usize,
    in_day: u64,
    /// Sequence per agency for the current day (dossier codes), reset each day.
    seq: std::collections::HashMap<usize, u32>,
    as_of: NaiveDateTime,
    bad_rows: f64,
    proc_cum: [Vec<(f64, usize)>; 2],
    online_cum: [Vec<(f64, usize)>; 2],
    agencies_by: AgencyIndex,
}

/// Agencies per handler, before and after the reorganisation, with cumulative weights.
struct AgencyIndex {
    departments: std::collections::HashMap<&'static str, usize>,
    districts_before: Vec<(f64, usize)>,
    communes_before: Vec<(f64, usize)>,
    communes_after: Vec<(f64, usize)>,
}

impl AgencyIndex {
    fn new(cat: &Catalogue) -> Self {
        let reorg = province::reorganisation();
        let mut departments = std::collections::HashMap::new();
        for (i, a) in cat.agencies.iter().enumerate() {
            if a.level == Level::Province {
                if let Some(nn) = province::DEPARTMENTS
                    .iter()
                    .find(|(nn, _)| province::department_code(nn) == a.code)
                {
                    departments.insert(nn.0, i);
                }
            }
        }
        let sel = |level: Level, after: bool| {
            cumulative(
                cat.agencies
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| {
                        a.level == level
                            && a.active_on(if after {
                                reorg
                            } else {
                                reorg - Duration::days(1)
                            })
                    })
                    .map(|(i, a)| (a.weight, i)),
            )
        };
        AgencyIndex {
            departments,
            districts_before: sel(Level::District, false),
            communes_before: sel(Level::Commune, false),
            communes_after: sel(Level::Commune, true),
        }
    }
}

fn cumulative(items: impl Iterator<Item = (f64, usize)>) -> Vec<(f64, usize)> {
    let mut acc = 0.0;
    items
        .map(|(w, i)| {
            acc += w;
            (acc, i)
        })
        .collect()
}

fn pick(rng: &mut impl Rng, cum: &[(f64, usize)]) -> usize {
    let total = cum.last().map(|c| c.0).unwrap_or(0.0);
    let x = rng.random::<f64>() * total;
    let i = cum.partition_point(|c| c.0 <= x).min(cum.len() - 1);
    cum[i].1
}

impl<'a> DossierGen<'a> {
    pub fn new(
        cat: &'a Catalogue,
        seed: u64,
        total: u64,
        until: NaiveDate,
        as_of: NaiveDateTime,
        bad_rows: f64,
    ) -> Self {
        let mut days = Vec::new();
        let mut d = first_day();
        while d <= until {
            days.push(d);
            d += Duration::days(1);
        }
        let counts = day_counts(&days, total);
        let era_weight = |p: &Procedure, after: bool| match (p.handler, after) {
            // District work moves to the communes after the reorganisation.
            (Handler::District, true) => p.weight * 1.1,
            _ => p.weight,
        };
        let proc_cum = [false, true].map(|after| {
            cumulative(
                cat.procedures
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (era_weight(p, after), i)),
            )
        });
        let online_cum = [false, true].map(|after| {
            cumulative(
                cat.procedures
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.service_level >= 3)
                    .map(|(i, p)| (era_weight(p, after), i)),
            )
        });
        let agencies_by = AgencyIndex::new(cat);
        DossierGen {
            cat,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xD055_1E55),
            days,
            counts,
            day_index: 0,
            in_day: 0,
            seq: Default::default(),
            as_of,
            bad_rows,
            proc_cum,
            online_cum,
            agencies_by,
        }
    }

    /// Number of days generated, for progress bars.
    pub fn day_count(&self) -> usize {
        self.days.len()
    }

    pub fn current_day_index(&self) -> usize {
        self.day_index
    }

    fn agency_for(&mut self, p: &Procedure, day: NaiveDate) -> usize {
        let after = day >= province::reorganisation();
        let idx = &self.agencies_by;
        match (p.handler, after) {
            (Handler::Department(nn), _) => idx.departments[nn],
            (Handler::District, false) => pick(&mut self.rng, &idx.districts_before),
            (Handler::Commune, false) => pick(&mut self.rng, &idx.communes_before),
            (_, true) => pick(&mut self.rng, &idx.communes_after),
        }
    }

    fn working_time(&mut self, d: NaiveDate) -> NaiveDateTime {
        // 07:30–11:30 and 13:30–17:00: 450 minutes of counter hours.
        let m = self.rng.random_range(0..450u32);
        let s = self.rng.random_range(0..60u32);
        if m < 240 {
            at(d, 7 + (30 + m) / 60, (30 + m) % 60, s)
        } else {
            let m = m - 240;
            at(d, 13 + (30 + m) / 60, (30 + m) % 60, s)
        }
    }

    /// One dossier received on `day`. The steps draw from the generator in a fixed order (the
    /// same seed gives the same data), so a step is never moved or skipped conditionally.
    fn generate(&mut self, day: NaiveDate, index_in_day: u64) -> Dossier {
        let cat = self.cat;
        let is_last = (day + Duration::days(1)).day() == 1;
        let edge = index_in_day < 2 && (day.day() == 1 || is_last);
        // Non-working days and the midnight edges only see online dossiers received by the system.
        let auto_online = !is_working_day(day) || edge;
        let pi = {
            let after = (day >= province::reorganisation()) as usize;
            let cum = if auto_online {
                &self.online_cum[after]
            } else {
                &self.proc_cum[after]
            };
            pick(&mut self.rng, cum)
        };
        let p = &cat.procedures[pi];
        let ai = self.agency_for(p, day);
        let agency = &cat.agencies[ai];
        let channel = self.channel(p, day, auto_online);
        let received = self.received(day, edge, is_last, auto_online, channel);
        let submitted = self.submitted(channel, auto_online, received);
        let work = self.schedule(p, day, received);
        let (applicant_type, applicant) = self.applicant(p, agency, day);
        let fate = self.fate(day, received, &work);
        let outcome = self.as_of_export(p, channel, received, work.supplements, fate);
        let Outcome {
            status,
            finished,
            returned,
            supplements,
        } = outcome;
        let (paid_online, digitized, vneid_verified) = self.online_services(p, channel, day);
        let updated_at = self.updated_at(received, status, finished, returned, &supplements);
        let late = work
            .due
            .zip(finished)
            .is_some_and(|(d, f)| f.date() > d.date());
        let vote = match (status, returned) {
            (10, Some(r)) if self.rng.random_bool(0.18) => self.vote(r, late),
            _ => None,
        };

        let seq = self.seq.entry(ai).or_insert(0);
        *seq += 1;
        let code = format!("{}-{}-{:04}", agency.code, day.format("%y%m%d"), seq);
        let mut d = Dossier {
            code,
            day,
            procedure: pi,
            agency: ai,
            channel,
            applicant_type,
            applicant,
            status,
            submitted_at: submitted,
            received_at: Some(received),
            due_at: work.due,
            finished_at: finished,
            returned_at: returned,
            supplements,
            fee_vnd: p.fee_vnd,
            paid_online,
            digitized,
            vneid_verified,
            updated_at,
            bad: None,
            vote,
        };
        if self.bad_rows > 0.0 && self.rng.random_bool(self.bad_rows.min(1.0)) {
            self.spoil(&mut d, received);
        }
        d
    }

    /// 1 at the counter, 2 online, 3 by post.
    fn channel(&mut self, p: &Procedure, day: NaiveDate, auto_online: bool) -> u8 {
        if auto_online {
            return 2;
        }
        let share = online_share(day)
            * if p.service_level == 4 {
                1.2
            } else if p.service_level == 3 {
                0.75
            } else {
                0.0
            };
        let x = self.rng.random::<f64>();
        if x < share.min(0.97) {
            2
        } else if x < share.min(0.97) + 0.02 {
            3
        } else {
            1
        }
    }

    fn received(
        &mut self,
        day: NaiveDate,
        edge: bool,
        is_last: bool,
        auto_online: bool,
        channel: u8,
    ) -> NaiveDateTime {
        if edge {
            let secs = self.rng.random_range(0..600i64);
            if is_last {
                at(day, 23, 50, 0) + Duration::seconds(secs)
            } else {
                at(day, 0, 0, 0) + Duration::seconds(secs)
            }
        } else if auto_online || (channel == 2 && self.rng.random_bool(0.3)) {
            at(day, 0, 0, 0) + Duration::seconds(self.rng.random_range(0..86_400))
        } else {
            self.working_time(day)
        }
    }

    fn submitted(
        &mut self,
        channel: u8,
        auto_online: bool,
        received: NaiveDateTime,
    ) -> Option<NaiveDateTime> {
        match channel {
            2 if !auto_online && self.rng.random_bool(0.7) => {
                Some(received - Duration::minutes(self.rng.random_range(5..2_160)))
            }
            3 => Some(received - Duration::days(self.rng.random_range(2..5))),
            1 if self.rng.random_bool(0.03) => None,
            _ => Some(received),
        }
    }

    /// When work starts, the supplement requests that pause it, and the due date.
    fn schedule(&mut self, p: &Procedure, day: NaiveDate, received: NaiveDateTime) -> Work {
        // Work starts the day of receipt during office hours, else the next working day.
        let start_day = if is_working_day(day)
            && received.time() < NaiveTime::from_hms_opt(16, 30, 0).expect("valid")
        {
            day
        } else {
            next_working_day(day + Duration::days(1))
        };
        let mut supplements = Vec::new();
        let supp_p = if p.field_code == "DD" { 0.15 } else { 0.06 };
        let mut pause_days = 0u32;
        if p.days.is_some_and(|d| d >= 3) && self.rng.random_bool(supp_p) {
            let k = if self.rng.random_bool(0.8) { 1 } else { 2 };
            let mut cursor = add_working_days(start_day, 1);
            for _ in 0..k {
                let requested = self.working_time(cursor);
                let wait = self.rng.random_range(2..7u32);
                let supplied_day = add_working_days(cursor, wait);
                let supplied = self.working_time(supplied_day);
                supplements.push((requested, Some(supplied)));
                pause_days += wait;
                cursor = add_working_days(supplied_day, 1);
            }
        }
        let due_day = p.days.map(|n| add_working_days(start_day, n + pause_days));
        Work {
            start_day,
            due_day,
            due: due_day.map(|d| at(d, 17, 0, 0)),
            supplements,
        }
    }

    fn applicant(&mut self, p: &Procedure, agency: &Agency, day: NaiveDate) -> (u8, Applicant) {
        let commune_name = agency.name.trim_start_matches("UBND ").to_string();
        let business_field = matches!(
            p.field_code,
            "DKKD" | "DT" | "ATTP" | "KDXD" | "LT" | "QLCL"
        ) && !p.name.contains("hộ kinh doanh");
        if business_field && self.rng.random_bool(0.85) {
            return (2, people::business(&mut self.rng, &commune_name));
        }
        let x = self.rng.random::<f64>();
        let applicant_type = if x < 0.92 {
            1
        } else if x < 0.96 {
            2
        } else if x < 0.98 {
            3
        } else {
            4
        };
        let applicant = if applicant_type == 2 {
            people::business(&mut self.rng, &commune_name)
        } else {
            people::citizen(&mut self.rng, day.year(), &commune_name)
        };
        (applicant_type, applicant)
    }

    /// The dossier's fate regardless of the export date: (status, finished).
    fn fate(
        &mut self,
        day: NaiveDate,
        received: NaiveDateTime,
        work: &Work,
    ) -> (u8, Option<NaiveDateTime>) {
        let late_p = 0.055 - 0.03 * (years_in(day) / 7.8).min(1.0);
        let x = self.rng.random::<f64>();
        let finish_of = |rng: &mut ChaCha8Rng, d: NaiveDate| -> NaiveDateTime {
            if d == day && received.time() < NaiveTime::from_hms_opt(16, 30, 0).expect("valid") {
                // Same-day work happens in office hours, even for a dossier received at night.
                received.max(at(day, 7, 30, 0)) + Duration::minutes(rng.random_range(5..150))
            } else {
                let m = rng.random_range(0..570u32);
                at(d, 7 + (30 + m) / 60, (30 + m) % 60, rng.random_range(0..60))
            }
        };
        let start_day = work.start_day;
        let earliest_day = work
            .supplements
            .last()
            .and_then(|s| s.1)
            .map(|s| add_working_days(s.date(), 1))
            .unwrap_or(start_day);
        if x < 0.008 {
            return (3, None);
        } else if x < 0.011 {
            return (8, None);
        } else if x < 0.014 {
            // Stuck: never finished, so pending past due once the due date passes.
            return (if work.supplements.is_empty() { 4 } else { 5 }, None);
        } else if x < 0.029 {
            let end = work
                .due_day
                .unwrap_or(add_working_days(start_day, 5))
                .max(earliest_day);
            let span = working_days_between(earliest_day, end);
            let d = add_working_days(earliest_day, self.rng.random_range(0..=span));
            return (7, Some(finish_of(&mut self.rng, d)));
        }
        let d = match work.due_day {
            None => add_working_days(earliest_day, self.rng.random_range(0..10)),
            Some(due_d) => {
                let y = self.rng.random::<f64>();
                if y < late_p {
                    let extra = if self.rng.random_bool(0.7) {
                        self.rng.random_range(1..4)
                    } else {
                        self.rng.random_range(4..15)
                    };
                    add_working_days(due_d, extra)
                } else if y < late_p + 0.62 && due_d > earliest_day {
                    let span = working_days_between(earliest_day, due_d).saturating_sub(1);
                    add_working_days(earliest_day, self.rng.random_range(0..=span))
                } else {
                    due_d.max(earliest_day)
                }
            }
        };
        (
            10,
            Some(finish_of(&mut self.rng, d).max(received + Duration::minutes(1))),
        )
    }

    /// What of the dossier's fate has happened by the export (`as_of`).
    fn as_of_export(
        &mut self,
        p: &Procedure,
        channel: u8,
        received: NaiveDateTime,
        mut supplements: Vec<(NaiveDateTime, Option<NaiveDateTime>)>,
        (mut status, mut finished): (u8, Option<NaiveDateTime>),
    ) -> Outcome {
        let mut returned = None;
        if let Some(f) = finished {
            if f >= self.as_of {
                finished = None;
                status = if !supplements.is_empty() && self.rng.random_bool(0.3) {
                    5
                } else if p.fee_vnd > 0 && self.rng.random_bool(0.05) {
                    6
                } else {
                    4
                };
            } else if status == 10 {
                // Results are handed over at the counter in office hours, or sent at once online.
                let r = if channel == 2 && self.rng.random_bool(0.5) {
                    f + Duration::minutes(self.rng.random_range(1..30))
                } else {
                    let day = add_working_days(f.date(), self.rng.random_range(0..3));
                    self.working_time(day).max(f + Duration::minutes(5))
                };
                if r < self.as_of && self.rng.random_bool(0.92) {
                    returned = Some(r);
                } else {
                    status = 9;
                }
            }
        }
        // Supplements not yet supplied by the export are still awaited.
        for s in supplements.iter_mut() {
            if s.1.is_some_and(|v| v >= self.as_of) {
                s.1 = None;
                if finished.is_none() && matches!(status, 4 | 6) {
                    status = 5;
                }
            }
        }
        supplements.retain(|s| s.0 < self.as_of);
        // Online dossiers of the last days may still wait to be accepted.
        if channel == 2
            && finished.is_none()
            && (self.as_of - received) < Duration::days(3)
            && self.rng.random_bool(0.2)
        {
            status = 1;
        }
        Outcome {
            status,
            finished,
            returned,
            supplements,
        }
    }

    /// (paid online: 0 no, 1 national portal, 2 the province's platform; digitized; VNeID).
    fn online_services(&mut self, p: &Procedure, channel: u8, day: NaiveDate) -> (u8, bool, bool) {
        let t = years_in(day);
        let paid_online = if p.fee_vnd > 0
            && channel == 2
            && self.rng.random_bool((0.05 + 0.6 * (t / 7.8)).min(0.9))
        {
            self.rng.random_range(1..=2u8)
        } else {
            0
        };
        let digitized_p = if day.year() < 2022 {
            0.0
        } else {
            (0.15 + 0.7 * ((t - 3.0) / 4.8)).clamp(0.0, 0.85)
        };
        let digitized = self.rng.random_bool(digitized_p);
        let vneid_verified = channel == 2
            && day >= NaiveDate::from_ymd_opt(2022, 7, 1).expect("valid")
            && self
                .rng
                .random_bool((0.2 + 0.7 * ((t - 3.5) / 4.3)).clamp(0.0, 0.92));
        (paid_online, digitized, vneid_verified)
    }

    fn updated_at(
        &mut self,
        received: NaiveDateTime,
        status: u8,
        finished: Option<NaiveDateTime>,
        returned: Option<NaiveDateTime>,
        supplements: &[(NaiveDateTime, Option<NaiveDateTime>)],
    ) -> NaiveDateTime {
        let mut latest = received;
        for v in [finished, returned]
            .into_iter()
            .flatten()
            .chain(supplements.iter().flat_map(|s| [Some(s.0), s.1]).flatten())
        {
            latest = latest.max(v);
        }
        if finished.is_some() || status == 3 || status == 8 {
            latest + Duration::seconds(self.rng.random_range(1..600))
        } else {
            latest + Duration::minutes(self.rng.random_range(1..2_880))
        }
        .min(self.as_of - Duration::seconds(1))
        .max(received)
    }

    /// A satisfaction vote after the result was returned at `r`; a late dossier's votes are worse.
    fn vote(&mut self, r: NaiveDateTime, late: bool) -> Option<(NaiveDateTime, u8)> {
        let v = r + Duration::minutes(self.rng.random_range(1..2_880));
        let y = self.rng.random::<f64>();
        let level = if late {
            if y < 0.2 {
                1
            } else if y < 0.55 {
                2
            } else if y < 0.8 {
                3
            } else {
                4
            }
        } else if y < 0.55 {
            1
        } else if y < 0.93 {
            2
        } else if y < 0.985 {
            3
        } else {
            4
        };
        (v < self.as_of).then_some((v, level))
    }

    /// Turns `d` into one of the malformed rows of `--bad-rows`.
    fn spoil(&mut self, d: &mut Dossier, received: NaiveDateTime) {
        let kind = BadKind::ALL[self.rng.random_range(0..4)];
        d.bad = Some(kind);
        d.vote = None;
        match kind {
            BadKind::MissingDate => d.received_at = None,
            BadKind::UnknownStatus => d.status = self.rng.random_range(11..100),
            BadKind::FinishBeforeReceipt => {
                let f = received - Duration::days(self.rng.random_range(1..6));
                d.status = 10;
                d.finished_at = Some(f);
                d.returned_at = None;
            }
            // Written as bytes that are not UTF-8 by the writer.
            BadKind::BrokenEncoding => {}
        }
    }
}

/// When work on a dossier starts and is due, and its supplement requests (requested, supplied).
struct Work {
    start_day: NaiveDate,
    due_day: Option<NaiveDate>,
    due: Option<NaiveDateTime>,
    supplements: Vec<(NaiveDateTime, Option<NaiveDateTime>)>,
}

/// A dossier's state at the export.
struct Outcome {
    status: u8,
    finished: Option<NaiveDateTime>,
    returned: Option<NaiveDateTime>,
    supplements: Vec<(NaiveDateTime, Option<NaiveDateTime>)>,
}

/// Working days from `a` to `b` (0 when `b <= a`).
fn working_days_between(a: NaiveDate, b: NaiveDate) -> u32 {
    let mut n = 0;
    let mut d = a;
    while d < b {
        d += Duration::days(1);
        if is_working_day(d) {
            n += 1;
        }
    }
    n
}

impl Iterator for DossierGen<'_> {
    type Item = Dossier;

    fn next(&mut self) -> Option<Dossier> {
        while self.day_index < self.days.len() && self.in_day >= self.counts[self.day_index] {
            self.day_index += 1;
            self.in_day = 0;
            self.seq.clear();
        }
        let day = *self.days.get(self.day_index)?;
        let i = self.in_day;
        self.in_day += 1;
        Some(self.generate(day, i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_cover_month_edges() {
        let days: Vec<NaiveDate> = (0..400).map(|i| first_day() + Duration::days(i)).collect();
        let c = day_counts(&days, 5_000);
        assert_eq!(c.iter().sum::<u64>(), 5_000);
        for (d, n) in days.iter().zip(&c) {
            if d.day() == 1 || (*d + Duration::days(1)).day() == 1 {
                assert!(*n >= 2, "{d} has {n}");
            }
        }
    }

    #[test]
    fn dossiers_keep_the_contract_rules() {
        let cat = Catalogue::new();
        let until = NaiveDate::from_ymd_opt(2026, 10, 31).unwrap();
        let as_of = at(NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(), 0, 0, 0);
        let mut n = 0;
        for d in DossierGen::new(&cat, 7, 3_000, until, as_of, 0.0) {
            n += 1;
            let r = d.received_at.unwrap();
            assert_eq!(
                d.finished_at.is_some(),
                matches!(d.status, 7 | 9 | 10),
                "{}",
                d.code
            );
            assert!(d.finished_at.is_none_or(|f| f >= r), "{}", d.code);
            assert!(
                d.due_at.is_none_or(|f| f >= r),
                "{} due {:?} received {r}",
                d.code,
                d.due_at
            );
            assert!(d.updated_at < as_of && d.updated_at >= r);
            let level = cat.agencies[d.agency].level;
            if r.date() >= province::reorganisation() {
                assert_ne!(level, Level::District);
            }
        }
        assert_eq!(n, 3_000);
    }
}
