//! The demo province: deterministic source data shaped like a Vietnamese province's real
//! exports: one-stop-shop dossiers as NDJSON in the national portal's sync format,
//! investment certificates and disbursements as CSV, rankings as XLSX, satisfaction votes as
//! CSV, and optionally the same dossiers in a one-stop-shop database (PostgreSQL, MariaDB).

pub mod calendar;
pub mod db;
pub mod dossier;
pub mod investment;
pub mod people;
pub mod province;
pub mod rating;

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use dossier::{BadKind, Catalogue, Dossier, DossierGen};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Csv { path: PathBuf, source: csv::Error },
    #[error("cannot write the rankings workbook {path}: {source}")]
    Xlsx {
        path: PathBuf,
        source: rust_xlsxwriter::XlsxError,
    },
    #[error("--bad-rows must be a share between 0 and 1, got {0}")]
    BadShare(f64),
    #[error("--until {0}: the demo's history starts in 2019-01; give a later month")]
    TooEarly(String),
    #[error("database load into {target} failed: {message}")]
    Database { target: String, message: String },
    #[error("{target} already holds {tables} and they were not created by `parstat demo` (no `{MARKER}` table): the demo would drop them. Point --postgres/--pg-schema or --mysql at a database of its own, or pass --force to replace them")]
    NotOurs { target: String, tables: String },
}

/// The table that marks a database's one-stop-shop tables as the demo's own.
pub const MARKER: &str = "parstat_demo";

fn csv_err(path: &Path) -> impl FnOnce(csv::Error) -> DemoError + '_ {
    move |source| DemoError::Csv {
        path: path.to_path_buf(),
        source,
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub seed: u64,
    pub dossiers: u64,
    /// Last month of data (the last complete month by default).
    pub until: (i32, u32),
    pub bad_rows: f64,
    /// Show a progress bar.
    pub progress: bool,
    /// Replace one-stop-shop tables that the demo did not create (`--force`).
    pub force: bool,
}

impl DemoOptions {
    /// Last day of the `until` month.
    pub fn until_day(&self) -> NaiveDate {
        let (y, m) = self.until;
        let next = if m == 12 {
            NaiveDate::from_ymd_opt(y + 1, 1, 1)
        } else {
            NaiveDate::from_ymd_opt(y, m + 1, 1)
        };
        next.expect("valid month") - Duration::days(1)
    }

    /// The export's moment: local midnight after the last day.
    pub fn as_of(&self) -> NaiveDateTime {
        (self.until_day() + Duration::days(1))
            .and_hms_opt(0, 0, 0)
            .expect("valid time")
    }

    /// The dossiers of these options, as every writer (files, PostgreSQL, MariaDB) must see
    /// them: the same seed and bounds give the same rows.
    pub fn dossier_gen<'a>(&self, cat: &'a Catalogue) -> DossierGen<'a> {
        DossierGen::new(
            cat,
            self.seed,
            self.dossiers,
            self.until_day(),
            self.as_of(),
            self.bad_rows,
        )
    }

    /// Latest rating year whose results are published (in May of the next year).
    pub fn last_rating_year(&self) -> i16 {
        let (y, m) = self.until;
        (if m >= 5 { y - 1 } else { y - 2 }) as i16
    }
}

/// The last complete month before `today`.
pub fn last_complete_month(today: NaiveDate) -> (i32, u32) {
    if today.month() == 1 {
        (today.year() - 1, 12)
    } else {
        (today.year(), today.month() - 1)
    }
}

/// Counts written per dataset and file, with the facts the demo must reproduce.
#[derive(Debug, Default, Serialize)]
pub struct Manifest {
    pub seed: u64,
    pub until: String,
    pub as_of_local: String,
    pub datasets: BTreeMap<String, DatasetCount>,
    pub files: BTreeMap<String, u64>,
    pub facts: Facts,
}

#[derive(Debug, Default, Serialize)]
pub struct DatasetCount {
    pub rows: u64,
    pub bad: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Facts {
    pub valid_projects_2021_10: usize,
    pub valid_capital_vnd_2021_10: String,
    pub par_2019_score: f64,
    pub par_2019_rank: u16,
    pub par_2012_rank: u16,
}

/// `yyyyMMddHHmmss`, the national portal's local time format.
pub fn compact(t: NaiveDateTime) -> String {
    t.format("%Y%m%d%H%M%S").to_string()
}

/// The national portal's sync record of a dossier (DVCQG `DongBoHoSoMC` field names).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SyncRecord<'a> {
    ma_ho_so: &'a str,
    #[serde(rename = "MaTTHC")]
    ma_tthc: &'a str,
    #[serde(rename = "TenTTHC")]
    ten_tthc: &'a str,
    ma_linh_vuc: &'a str,
    ten_linh_vuc: &'a str,
    ma_don_vi_xu_ly: &'a str,
    don_vi_xu_ly: &'a str,
    cap_xu_ly: &'a str,
    ma_dia_ban: Option<&'a str>,
    muc_do: u8,
    kenh_thuc_hien: u8,
    loai_doi_tuong: u8,
    chu_ho_so: &'a str,
    so_giay_to_chu_ho_so: &'a str,
    so_dien_thoai: &'a str,
    dia_chi: &'a str,
    trang_thai_ho_so: u8,
    ngay_nop_ho_so: Option<String>,
    ngay_tiep_nhan: Option<String>,
    ngay_hen_tra: Option<String>,
    ngay_ket_thuc_xu_ly: Option<String>,
    ngay_tra: Option<String>,
    danh_sach_ho_so_bo_sung: Vec<Supplement>,
    danh_sach_le_phi: Vec<Fee<'a>>,
    duoc_thanh_toan_truc_tuyen: u8,
    ho_so_co_thanh_phan_so_hoa: u8,
    #[serde(rename = "TaiKhoanDuocXacThucVoiVNeID")]
    tai_khoan_duoc_xac_thuc_voi_vneid: u8,
    ngay_cap_nhat: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Supplement {
    ngay_yeu_cau: String,
    ngay_bo_sung: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Fee<'a> {
    ten_phi_le_phi: &'a str,
    gia: i64,
}

/// Marker replaced by bytes that are not UTF-8 for `broken_encoding` rows.
const BROKEN_MARKER: &str = "\u{1}BROKEN\u{1}";

/// TCVN3/Latin-1 bytes of "Thủ tục": what a mis-encoded export holds instead of UTF-8.
const BROKEN_BYTES: &[u8] = b"Th\xf7 t\xf5c";

fn write_sync_record(out: &mut Vec<u8>, cat: &Catalogue, d: &Dossier) -> serde_json::Result<()> {
    let p = &cat.procedures[d.procedure];
    let a = &cat.agencies[d.agency];
    let fees = if d.fee_vnd > 0 {
        vec![Fee {
            ten_phi_le_phi: "Lệ phí giải quyết thủ tục",
            gia: d.fee_vnd,
        }]
    } else {
        Vec::new()
    };
    let rec = SyncRecord {
        ma_ho_so: &d.code,
        ma_tthc: &p.code,
        ten_tthc: if d.bad == Some(BadKind::BrokenEncoding) {
            BROKEN_MARKER
        } else {
            p.name
        },
        ma_linh_vuc: p.field_code,
        ten_linh_vuc: p.field_name,
        ma_don_vi_xu_ly: &a.code,
        don_vi_xu_ly: &a.name,
        cap_xu_ly: a.level.source_code(),
        ma_dia_ban: a.area_code.as_deref(),
        muc_do: p.service_level,
        kenh_thuc_hien: d.channel,
        loai_doi_tuong: d.applicant_type,
        chu_ho_so: &d.applicant.name,
        so_giay_to_chu_ho_so: &d.applicant.id,
        so_dien_thoai: &d.applicant.phone,
        dia_chi: &d.applicant.address,
        trang_thai_ho_so: d.status,
        ngay_nop_ho_so: d.submitted_at.map(compact),
        ngay_tiep_nhan: d.received_at.map(compact),
        ngay_hen_tra: d.due_at.map(compact),
        ngay_ket_thuc_xu_ly: d.finished_at.map(compact),
        ngay_tra: d.returned_at.map(compact),
        danh_sach_ho_so_bo_sung: d
            .supplements
            .iter()
            .map(|s| Supplement {
                ngay_yeu_cau: compact(s.0),
                ngay_bo_sung: s.1.map(compact),
            })
            .collect(),
        danh_sach_le_phi: fees,
        duoc_thanh_toan_truc_tuyen: d.paid_online,
        ho_so_co_thanh_phan_so_hoa: d.digitized as u8,
        tai_khoan_duoc_xac_thuc_voi_vneid: d.vneid_verified as u8,
        ngay_cap_nhat: compact(d.updated_at),
    };
    let start = out.len();
    serde_json::to_writer(&mut *out, &rec)?;
    if d.bad == Some(BadKind::BrokenEncoding) {
        let marker = serde_json::to_string(BROKEN_MARKER)?;
        let marker = &marker[1..marker.len() - 1];
        if let Some(pos) = find(&out[start..], marker.as_bytes()) {
            let at = start + pos;
            out.splice(at..at + marker.len(), BROKEN_BYTES.iter().copied());
        }
    }
    out.push(b'\n');
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub const VOTE_LEVELS: &[(u8, &str, &str)] = &[
    (1, "Rất hài lòng", "very_satisfied"),
    (2, "Hài lòng", "satisfied"),
    (3, "Bình thường", "neutral"),
    (4, "Không hài lòng", "dissatisfied"),
];

/// Relative paths of the generated files, as the pipelines' globs expect them.
pub const DOSSIER_DIR: &str = "motcua";
pub const VOTES_FILE: &str = "motcua/danh_gia_hai_long.csv";
pub const EVENTS_FILE: &str = "dautu/su_kien_dau_tu.csv";
pub const DISBURSEMENTS_FILE: &str = "dautu/giai_ngan.csv";
pub const RATINGS_FILE: &str = "xephang/ket_qua_cchc.xlsx";

fn progress_bar(enabled: bool, len: u64, what: &str) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} days ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Generates every source file into `out` (replaced whole: written beside it, then renamed,
/// so a failed run leaves the previous data as it was).
pub fn generate_files(opts: &DemoOptions, out: &Path) -> Result<Manifest, DemoError> {
    if !(0.0..=1.0).contains(&opts.bad_rows) {
        return Err(DemoError::BadShare(opts.bad_rows));
    }
    if opts.until < (2019, 1) {
        return Err(DemoError::TooEarly(format!(
            "{}-{:02}",
            opts.until.0, opts.until.1
        )));
    }
    let tmp = out.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    for sub in ["motcua", "dautu", "xephang"] {
        std::fs::create_dir_all(tmp.join(sub)).map_err(io(&tmp))?;
    }
    let mut manifest = Manifest {
        seed: opts.seed,
        until: format!("{}-{:02}", opts.until.0, opts.until.1),
        as_of_local: opts.as_of().format("%Y-%m-%dT%H:%M:%S").to_string(),
        ..Default::default()
    };
    write_dossiers(opts, &tmp, &mut manifest)?;
    write_investment(opts, &tmp, &mut manifest)?;
    let rows = rating::rows(opts.seed, opts.last_rating_year());
    let path = tmp.join(RATINGS_FILE);
    let published = opts.until_day();
    let published = (
        published.year() as u16,
        published.month() as u8,
        published.day() as u8,
    );
    rating::write_xlsx(&rows, &path, published).map_err(|source| DemoError::Xlsx {
        path: path.clone(),
        source,
    })?;
    manifest.datasets.insert(
        "rating".into(),
        DatasetCount {
            rows: rows.len() as u64,
            bad: BTreeMap::new(),
        },
    );
    manifest
        .files
        .insert(RATINGS_FILE.into(), rows.len() as u64);
    if let Some(r) = rating::PAR_HISTORY.iter().find(|r| r.0 == 2019) {
        manifest.facts.par_2019_score = r.1;
        manifest.facts.par_2019_rank = r.2;
    }
    if let Some(r) = rating::PAR_HISTORY.iter().find(|r| r.0 == 2012) {
        manifest.facts.par_2012_rank = r.2;
    }
    let mpath = tmp.join("manifest.json");
    let f = File::create(&mpath).map_err(io(&mpath))?;
    serde_json::to_writer_pretty(BufWriter::new(f), &manifest).map_err(|e| DemoError::Io {
        path: mpath.clone(),
        source: e.into(),
    })?;

    if out.exists() {
        std::fs::remove_dir_all(out).map_err(io(out))?;
    }
    std::fs::rename(&tmp, out).map_err(io(out))?;
    Ok(manifest)
}

fn write_dossiers(
    opts: &DemoOptions,
    dir: &Path,
    manifest: &mut Manifest,
) -> Result<(), DemoError> {
    let cat = Catalogue::new();
    let mut gen = opts.dossier_gen(&cat);
    let pb = progress_bar(opts.progress, gen.day_count() as u64, "dossiers");
    let mut votes = VoteFile::create(dir.join(VOTES_FILE), opts)?;
    let mut count = DatasetCount::default();
    let mut current: Option<MonthFile> = None;
    let mut line = Vec::with_capacity(2048);
    let mut last_day = 0;
    while let Some(d) = gen.next() {
        if gen.current_day_index() != last_day {
            pb.set_position(gen.current_day_index() as u64);
            last_day = gen.current_day_index();
        }
        // Files by month of receipt, as the nightly export batches them.
        let day = d.day;
        let month = format!("{}{:02}", day.year(), day.month());
        if current.as_ref().is_none_or(|c| c.month != month) {
            if let Some(done) = current.take() {
                done.close(manifest)?;
            }
            current = Some(MonthFile::create(dir, month)?);
        }
        let file = current.as_mut().expect("opened above");
        line.clear();
        write_sync_record(&mut line, &cat, &d).map_err(|e| DemoError::Io {
            path: file.path.clone(),
            source: e.into(),
        })?;
        file.writer.write_all(&line).map_err(io(&file.path))?;
        file.rows += 1;
        count.rows += 1;
        if let Some(b) = d.bad {
            *count.bad.entry(b.name().to_string()).or_default() += 1;
        }
        if let Some((at, level)) = d.vote {
            votes.write(&d.code, at, level)?;
        }
    }
    if let Some(done) = current.take() {
        done.close(manifest)?;
    }
    votes.close(manifest)?;
    pb.finish_and_clear();
    manifest.datasets.insert("dossier".into(), count);
    Ok(())
}

/// One month's NDJSON file of dossiers (`hoso_YYYYMM.ndjson`).
struct MonthFile {
    month: String,
    writer: BufWriter<File>,
    path: PathBuf,
    rows: u64,
}

impl MonthFile {
    fn create(dir: &Path, month: String) -> Result<Self, DemoError> {
        let path = dir.join(format!("{DOSSIER_DIR}/hoso_{month}.ndjson"));
        let f = File::create(&path).map_err(io(&path))?;
        Ok(MonthFile {
            month,
            writer: BufWriter::with_capacity(1 << 20, f),
            path,
            rows: 0,
        })
    }

    fn close(mut self, manifest: &mut Manifest) -> Result<(), DemoError> {
        self.writer.flush().map_err(io(&self.path))?;
        manifest.files.insert(
            format!("{DOSSIER_DIR}/hoso_{}.ndjson", self.month),
            self.rows,
        );
        Ok(())
    }
}

/// The satisfaction votes' CSV. Votes have bad rows of their own under `--bad-rows`, drawn
/// from a generator of their own so that the dossiers stay the same.
struct VoteFile {
    path: PathBuf,
    writer: csv::Writer<BufWriter<File>>,
    rng: rand_chacha::ChaCha8Rng,
    bad_rows: f64,
    count: DatasetCount,
}

impl VoteFile {
    fn create(path: PathBuf, opts: &DemoOptions) -> Result<Self, DemoError> {
        let mut writer =
            csv::Writer::from_writer(BufWriter::new(File::create(&path).map_err(io(&path))?));
        writer
            .write_record(["MaHoSo", "ThoiGianDanhGia", "MucDoHaiLong"])
            .map_err(csv_err(&path))?;
        Ok(VoteFile {
            path,
            writer,
            rng: <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(opts.seed ^ 0x7075),
            bad_rows: opts.bad_rows,
            count: DatasetCount::default(),
        })
    }

    fn write(&mut self, code: &str, at: NaiveDateTime, level: u8) -> Result<(), DemoError> {
        let label = VOTE_LEVELS
            .iter()
            .find(|v| v.0 == level)
            .map(|v| v.1)
            .unwrap_or("Hài lòng");
        let mut time = at.format("%d/%m/%Y %H:%M:%S").to_string();
        let mut label = label.to_string();
        // A missing time, or a level the kiosk never offered.
        if self.bad_rows > 0.0 && rand::Rng::random_bool(&mut self.rng, self.bad_rows.min(1.0)) {
            let bad = if rand::Rng::random_bool(&mut self.rng, 0.5) {
                time.clear();
                BadKind::MissingDate.name()
            } else {
                label = "Rất tốt".into();
                "unknown_level"
            };
            *self.count.bad.entry(bad.into()).or_default() += 1;
        }
        self.writer
            .write_record([code, &time, &label])
            .map_err(csv_err(&self.path))?;
        self.count.rows += 1;
        Ok(())
    }

    fn close(mut self, manifest: &mut Manifest) -> Result<(), DemoError> {
        self.writer.flush().map_err(io(&self.path))?;
        manifest.files.insert(VOTES_FILE.into(), self.count.rows);
        manifest
            .datasets
            .insert("satisfaction_vote".into(), self.count);
        Ok(())
    }
}

pub const EVENT_HEADERS: &[&str] = &[
    "MaDuAn",
    "LanCap",
    "LoaiSuKien",
    "NgayCap",
    "TenDuAn",
    "NhaDauTu",
    "QuocTichNDT",
    "NguonVon",
    "CoQuanCap",
    "VonDangKyVND",
    "VonThayDoiVND",
    "VonDangKyUSD",
    "MaNganh",
    "TenNganh",
    "MaDiaBan",
    "KhuKinhTe",
    "DienTichHa",
    "NgayCapNhat",
];

fn write_investment(
    opts: &DemoOptions,
    dir: &Path,
    manifest: &mut Manifest,
) -> Result<(), DemoError> {
    let until = opts.until_day();
    let projects = investment::projects(opts.seed, until);
    let events = write_events(dir, &projects)?;
    let disb = write_disbursements(opts, dir, &projects)?;
    let cutoff = investment::calibration_cutoff();
    let valid: Vec<i128> = projects.iter().filter_map(|p| p.valid_at(cutoff)).collect();
    manifest.facts.valid_projects_2021_10 = valid.len();
    manifest.facts.valid_capital_vnd_2021_10 = valid.iter().sum::<i128>().to_string();
    manifest.files.insert(EVENTS_FILE.into(), events);
    manifest.files.insert(DISBURSEMENTS_FILE.into(), disb);
    manifest.datasets.insert(
        "investment_event".into(),
        DatasetCount {
            rows: events,
            bad: BTreeMap::new(),
        },
    );
    manifest.datasets.insert(
        "investment_disbursement".into(),
        DatasetCount {
            rows: disb,
            bad: BTreeMap::new(),
        },
    );
    Ok(())
}

/// The investment certificates' events CSV; returns its rows.
fn write_events(dir: &Path, projects: &[investment::Project]) -> Result<u64, DemoError> {
    let new_communes = province::new_communes(&province::old_communes());
    let epath = dir.join(EVENTS_FILE);
    let mut w = csv::Writer::from_writer(BufWriter::new(File::create(&epath).map_err(io(&epath))?));
    w.write_record(EVENT_HEADERS).map_err(csv_err(&epath))?;
    let mut events = 0u64;
    for p in projects {
        for e in &p.events {
            let usd = investment::usd_cents(p, e)
                .map(|c| format!("{}.{:02}", c / 100, c % 100))
                .unwrap_or_default();
            let updated = e.date.and_hms_opt(16, 0, 0).expect("valid")
                + Duration::minutes(e.version as i64 * 7 + 3);
            w.write_record([
                p.code.as_str(),
                &e.version.to_string(),
                e.kind.source_code(),
                &e.date.format("%d/%m/%Y").to_string(),
                &p.name,
                &p.investor,
                p.country,
                if p.fdi { "FDI" } else { "TRONG_NUOC" },
                if p.ezone { "BQLKKT" } else { "SKHDT" },
                &e.capital_vnd.to_string(),
                &e.change_vnd.to_string(),
                &usd,
                p.sector.0,
                p.sector.1,
                &investment::area_code(p, e.date, &new_communes),
                p.zone.unwrap_or(""),
                &p.land_ha.map(|h| format!("{h:.2}")).unwrap_or_default(),
                &updated.format("%Y-%m-%d %H:%M:%S").to_string(),
            ])
            .map_err(csv_err(&epath))?;
            events += 1;
        }
    }
    w.flush().map_err(io(&epath))?;
    Ok(events)
}

/// The monthly cumulative disbursements CSV; returns its rows.
fn write_disbursements(
    opts: &DemoOptions,
    dir: &Path,
    projects: &[investment::Project],
) -> Result<u64, DemoError> {
    let until = opts.until_day();
    let dpath = dir.join(DISBURSEMENTS_FILE);
    let mut w = csv::Writer::from_writer(BufWriter::new(File::create(&dpath).map_err(io(&dpath))?));
    w.write_record(["MaDuAn", "KyBaoCao", "VonGiaiNganLuyKeVND", "NgayCapNhat"])
        .map_err(csv_err(&dpath))?;
    let mut disb = 0u64;
    for p in projects {
        for (month, value) in investment::disbursements(p, until) {
            let reported =
                (month + Duration::days(40)).min(opts.as_of().date() - Duration::days(1));
            w.write_record([
                p.code.as_str(),
                &month.format("%Y-%m").to_string(),
                &value.to_string(),
                &reported
                    .and_hms_opt(9, 30, 0)
                    .expect("valid")
                    .format("%Y-%m-%d %H:%M:%S")
                    .to_string(),
            ])
            .map_err(csv_err(&dpath))?;
            disb += 1;
        }
    }
    w.flush().map_err(io(&dpath))?;
    Ok(disb)
}
