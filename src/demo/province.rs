//! The demo province's administrative map (modelled on Hà Tĩnh): departments, the 13 district
//! units and their communes until 2025-06-30, the 69 communes and wards after, and the
//! procedures each level handles with their processing times and fees.

use chrono::NaiveDate;

/// The day the district level disappears (Resolution on the 2025 reorganisation).
pub fn reorganisation() -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 7, 1).expect("valid date")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Province,
    District,
    Commune,
}

impl Level {
    /// The one-stop-shop system's own code (`CapXuLy`), mapped to the contract by the pipeline.
    pub fn source_code(self) -> &'static str {
        match self {
            Level::Province => "TINH",
            Level::District => "HUYEN",
            Level::Commune => "XA",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Agency {
    pub code: String,
    pub name: String,
    pub level: Level,
    pub area_code: Option<String>,
    /// District code the agency lies in (for communes and districts).
    pub district: Option<u16>,
    /// Relative volume of dossiers.
    pub weight: f64,
    pub from: Option<NaiveDate>,
    pub until: Option<NaiveDate>,
}

impl Agency {
    pub fn active_on(&self, d: NaiveDate) -> bool {
        self.from.is_none_or(|f| d >= f) && self.until.is_none_or(|u| d < u)
    }
}

pub const DEPARTMENTS: &[(&str, &str)] = &[
    ("01", "Văn phòng UBND tỉnh"),
    ("02", "Sở Nội vụ"),
    ("03", "Sở Tư pháp"),
    ("04", "Sở Kế hoạch và Đầu tư"),
    ("05", "Sở Tài chính"),
    ("06", "Sở Công Thương"),
    ("07", "Sở Nông nghiệp và Phát triển nông thôn"),
    ("08", "Sở Giao thông vận tải"),
    ("09", "Sở Xây dựng"),
    ("10", "Sở Tài nguyên và Môi trường"),
    ("11", "Sở Thông tin và Truyền thông"),
    ("12", "Sở Lao động - Thương binh và Xã hội"),
    ("13", "Sở Văn hóa, Thể thao và Du lịch"),
    ("14", "Sở Khoa học và Công nghệ"),
    ("15", "Sở Giáo dục và Đào tạo"),
    ("16", "Sở Y tế"),
    ("17", "Sở Ngoại vụ"),
    ("18", "Thanh tra tỉnh"),
    ("19", "Ban Quản lý Khu kinh tế tỉnh"),
];

pub fn department_code(nn: &str) -> String {
    format!("000.00.{nn}.H42")
}

/// District-level units until 2025-06-30: code, name, number of communes, commune name stem.
pub const DISTRICTS: &[(u16, &str, usize, &str)] = &[
    (436, "thành phố Hà Tĩnh", 15, ""),
    (437, "thị xã Hồng Lĩnh", 5, ""),
    (439, "huyện Hương Sơn", 23, "Sơn"),
    (440, "huyện Đức Thọ", 16, "Đức"),
    (441, "huyện Vũ Quang", 10, "Quang"),
    (442, "huyện Nghi Xuân", 17, "Xuân"),
    (443, "huyện Can Lộc", 19, "Thiên"),
    (444, "huyện Hương Khê", 20, "Hương"),
    (445, "huyện Thạch Hà", 21, "Thạch"),
    (446, "huyện Cẩm Xuyên", 21, "Cẩm"),
    (447, "huyện Kỳ Anh", 19, "Kỳ"),
    (448, "huyện Lộc Hà", 12, "Lộc"),
    (449, "thị xã Kỳ Anh", 11, "Kỳ"),
];

const STEMS: &[&str] = &[
    "An", "Bình", "Châu", "Đông", "Hà", "Hải", "Hòa", "Hưng", "Khê", "Lạc", "Lâm", "Long", "Mỹ",
    "Ninh", "Phú", "Phúc", "Quang", "Sơn", "Tân", "Thắng", "Thịnh", "Thủy", "Tiến", "Trung",
    "Vinh", "Yên", "Lĩnh", "Hồng", "Bắc", "Nam", "Tây", "Thành", "Đồng", "Liên", "Văn",
];

const CITY_WARDS: &[&str] = &[
    "Bắc Hà",
    "Nam Hà",
    "Tân Giang",
    "Trần Phú",
    "Hà Huy Tập",
    "Thạch Linh",
    "Thạch Quý",
    "Văn Yên",
    "Đại Nài",
    "Nguyễn Du",
    "Thạch Trung",
    "Đồng Môn",
    "Thạch Hạ",
    "Thạch Hưng",
    "Thạch Bình",
];

const HONG_LINH: &[&str] = &[
    "Bắc Hồng",
    "Nam Hồng",
    "Trung Lương",
    "Đức Thuận",
    "Đậu Liêu",
];

/// Wards and communes after 2025-07-01 with names of their own (the rest keep a merged
/// commune's name).
const NEW_NAMES: &[&str] = &[
    "Phường Thành Sen",
    "Phường Trần Phú",
    "Phường Hà Huy Tập",
    "Phường Bắc Hồng Lĩnh",
    "Phường Nam Hồng Lĩnh",
    "Phường Vũng Áng",
    "Phường Sông Trí",
    "Phường Hoành Sơn",
    "Phường Hải Ninh",
    "Xã Thạch Hà",
    "Xã Cẩm Xuyên",
    "Xã Đức Thọ",
    "Xã Hương Sơn",
    "Xã Nghi Xuân",
    "Xã Can Lộc",
    "Xã Hương Khê",
    "Xã Vũ Quang",
    "Xã Lộc Hà",
    "Xã Kỳ Anh",
    "Xã Thiên Cầm",
    "Xã Tiên Điền",
];

#[derive(Debug, Clone)]
pub struct Commune {
    pub code: String,
    pub name: String,
    pub district: u16,
}

/// The ~209 communes, wards and townships before the reorganisation, with GSO-style codes.
pub fn old_communes() -> Vec<Commune> {
    let mut out = Vec::new();
    let mut code = 18070u32;
    for &(d, dname, n, stem) in DISTRICTS {
        for i in 0..n {
            let name = match d {
                436 => {
                    let w = CITY_WARDS[i % CITY_WARDS.len()];
                    if i < 10 {
                        format!("Phường {w}")
                    } else {
                        format!("Xã {w}")
                    }
                }
                437 => format!("Phường {}", HONG_LINH[i % HONG_LINH.len()]),
                449 => format!("Phường {} {}", stem, STEMS[i % STEMS.len()]),
                _ if i == 0 => {
                    let town = dname.trim_start_matches("huyện ");
                    format!("Thị trấn {town}")
                }
                _ => {
                    // Skip stems equal to the district stem ("Sơn Sơn").
                    let s = STEMS[(i * 7 + d as usize) % STEMS.len()];
                    let s = if s == stem {
                        STEMS[(i * 7 + d as usize + 1) % STEMS.len()]
                    } else {
                        s
                    };
                    let mut name = format!("Xã {stem} {s}");
                    if out
                        .iter()
                        .any(|c: &Commune| c.name == name && c.district == d)
                    {
                        name = format!("Xã {stem} {s} {}", ["Đông", "Tây", "Nam", "Bắc"][i % 4]);
                    }
                    name
                }
            };
            out.push(Commune {
                code: format!("{code:05}"),
                name,
                district: d,
            });
            code += 3;
        }
    }
    out
}

/// The 69 communes and wards from 2025-07-01, each formed from neighbouring old communes of
/// one former district, keeping the code of the first.
pub fn new_communes(old: &[Commune]) -> Vec<Commune> {
    let total_old = old.len();
    // Allocate 69 new units to districts in proportion to their old communes.
    let mut alloc: Vec<(u16, usize)> = DISTRICTS
        .iter()
        .map(|&(d, _, n, _)| {
            (
                d,
                ((n * 69) as f64 / total_old as f64).floor().max(1.0) as usize,
            )
        })
        .collect();
    let mut i = 0;
    while alloc.iter().map(|a| a.1).sum::<usize>() < 69 {
        let n = alloc.len();
        alloc[i % n].1 += 1;
        i += 1;
    }
    let mut out = Vec::new();
    let mut named = 0;
    for (d, k) in alloc {
        let members: Vec<&Commune> = old.iter().filter(|c| c.district == d).collect();
        // Exactly k groups of consecutive communes.
        for j in 0..k {
            let first = members[j * members.len() / k];
            let name = if j == 0 && named < NEW_NAMES.len() {
                named += 1;
                NEW_NAMES[named - 1].to_string()
            } else {
                first.name.replace("Thị trấn", "Xã")
            };
            let mut name = name;
            for suffix in ["Đông", "Tây", "Nam", "Bắc", "Trung"] {
                if !out.iter().any(|c: &Commune| c.name == name) {
                    break;
                }
                name = format!("{} {suffix}", first.name.replace("Thị trấn", "Xã"));
            }
            out.push(Commune {
                code: first.code.clone(),
                name,
                district: d,
            });
        }
    }
    out
}

/// The area reference table the report SQL reads (`sql/seeds/area.csv`): the district-level
/// units until the reorganisation, then the new communes and wards, with their validity.
pub fn area_seed_csv() -> String {
    let reorg = reorganisation();
    let last = reorg.pred_opt().expect("a day before");
    let mut s = String::from("area_code,area_name,area_level,valid_from,valid_until\n");
    for &(d, name, _, _) in DISTRICTS {
        s.push_str(&format!("{d},{name},district,,{last}\n"));
    }
    for c in new_communes(&old_communes()) {
        s.push_str(&format!("{},{},commune,{reorg},\n", c.code, c.name));
    }
    s
}

/// Every agency that handles dossiers over the demo's history.
pub fn agencies() -> Vec<Agency> {
    let reorg = reorganisation();
    let mut out = Vec::new();
    for (i, &(nn, name)) in DEPARTMENTS.iter().enumerate() {
        out.push(Agency {
            code: department_code(nn),
            name: name.to_string(),
            level: Level::Province,
            area_code: None,
            district: None,
            weight: 1.0 + (i % 5) as f64 * 0.3,
            from: None,
            until: None,
        });
    }
    for &(d, name, n, _) in DISTRICTS {
        out.push(Agency {
            code: format!("000.00.{d}.H42"),
            name: format!("UBND {name}"),
            level: Level::District,
            area_code: Some(d.to_string()),
            district: Some(d),
            weight: 0.6 + n as f64 / 20.0,
            from: None,
            until: Some(reorg),
        });
    }
    let old = old_communes();
    for c in &old {
        out.push(Agency {
            code: format!("{}.{}.H42", c.district, c.code),
            name: format!("UBND {}", c.name),
            level: Level::Commune,
            area_code: Some(c.district.to_string()),
            district: Some(c.district),
            weight: 1.0,
            from: None,
            until: Some(reorg),
        });
    }
    for c in new_communes(&old) {
        out.push(Agency {
            code: format!("000.{}.H42", c.code),
            name: format!("UBND {}", c.name),
            level: Level::Commune,
            area_code: Some(c.code.clone()),
            district: Some(c.district),
            weight: 3.0,
            from: Some(reorg),
            until: None,
        });
    }
    out
}

/// Which agencies handle a procedure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// One department, by its two-digit number.
    Department(&'static str),
    /// The district People's Committees; from 2025-07-01 the communes.
    District,
    Commune,
}

#[derive(Debug, Clone)]
pub struct Procedure {
    pub code: String,
    pub name: &'static str,
    pub field_code: &'static str,
    pub field_name: &'static str,
    pub handler: Handler,
    /// Processing time in working days; `None`: the law sets no deadline.
    pub days: Option<u32>,
    /// 2 information only, 3 partly online, 4 fully online.
    pub service_level: u8,
    pub fee_vnd: i64,
    pub weight: f64,
}

type P = (
    &'static str,
    &'static str,
    &'static str,
    Handler,
    Option<u32>,
    u8,
    i64,
    f64,
);

const PROCEDURES: &[P] = &[
    (
        "Đăng ký khai sinh",
        "HT",
        "Hộ tịch",
        Handler::Commune,
        Some(1),
        4,
        0,
        9.0,
    ),
    (
        "Đăng ký kết hôn",
        "HT",
        "Hộ tịch",
        Handler::Commune,
        Some(1),
        3,
        0,
        3.0,
    ),
    (
        "Đăng ký khai tử",
        "HT",
        "Hộ tịch",
        Handler::Commune,
        Some(1),
        4,
        0,
        2.5,
    ),
    (
        "Cấp bản sao trích lục hộ tịch",
        "HT",
        "Hộ tịch",
        Handler::Commune,
        Some(1),
        4,
        8_000,
        4.0,
    ),
    (
        "Xác nhận tình trạng hôn nhân",
        "HT",
        "Hộ tịch",
        Handler::Commune,
        Some(3),
        4,
        0,
        4.0,
    ),
    (
        "Chứng thực bản sao từ bản chính",
        "CT",
        "Chứng thực",
        Handler::Commune,
        Some(0),
        3,
        2_000,
        14.0,
    ),
    (
        "Chứng thực chữ ký trong giấy tờ, văn bản",
        "CT",
        "Chứng thực",
        Handler::District,
        Some(0),
        3,
        10_000,
        3.0,
    ),
    (
        "Đăng ký biến động quyền sử dụng đất",
        "DD",
        "Đất đai",
        Handler::District,
        Some(10),
        3,
        50_000,
        6.0,
    ),
    (
        "Cấp Giấy chứng nhận quyền sử dụng đất lần đầu",
        "DD",
        "Đất đai",
        Handler::District,
        Some(30),
        3,
        100_000,
        3.5,
    ),
    (
        "Chuyển mục đích sử dụng đất",
        "DD",
        "Đất đai",
        Handler::District,
        Some(15),
        3,
        0,
        1.5,
    ),
    (
        "Đăng ký hộ kinh doanh",
        "HKD",
        "Thành lập và hoạt động của hộ kinh doanh",
        Handler::District,
        Some(3),
        4,
        100_000,
        2.5,
    ),
    (
        "Cấp giấy phép xây dựng nhà ở riêng lẻ",
        "XD",
        "Hoạt động xây dựng",
        Handler::District,
        Some(15),
        4,
        75_000,
        2.0,
    ),
    (
        "Giải quyết trợ cấp xã hội hàng tháng",
        "BTXH",
        "Bảo trợ xã hội",
        Handler::District,
        Some(15),
        3,
        0,
        1.5,
    ),
    (
        "Đăng ký thành lập doanh nghiệp",
        "DKKD",
        "Thành lập và hoạt động của doanh nghiệp",
        Handler::Department("04"),
        Some(3),
        4,
        50_000,
        3.0,
    ),
    (
        "Đăng ký thay đổi nội dung đăng ký doanh nghiệp",
        "DKKD",
        "Thành lập và hoạt động của doanh nghiệp",
        Handler::Department("04"),
        Some(3),
        4,
        50_000,
        3.5,
    ),
    (
        "Cấp Giấy chứng nhận đăng ký đầu tư",
        "DT",
        "Đầu tư tại Việt Nam",
        Handler::Department("04"),
        Some(15),
        3,
        0,
        0.3,
    ),
    (
        "Cấp Giấy chứng nhận đăng ký đầu tư trong khu kinh tế",
        "DT",
        "Đầu tư tại Việt Nam",
        Handler::Department("19"),
        Some(15),
        3,
        0,
        0.2,
    ),
    (
        "Cấp giấy phép xây dựng trong khu kinh tế",
        "XD",
        "Hoạt động xây dựng",
        Handler::Department("19"),
        Some(15),
        3,
        150_000,
        0.3,
    ),
    (
        "Cấp giấy phép lao động cho người nước ngoài",
        "VL",
        "Việc làm",
        Handler::Department("12"),
        Some(5),
        4,
        600_000,
        0.6,
    ),
    (
        "Giải quyết hưởng trợ cấp thất nghiệp",
        "VL",
        "Việc làm",
        Handler::Department("12"),
        Some(20),
        3,
        0,
        2.0,
    ),
    (
        "Cấp Phiếu lý lịch tư pháp",
        "LLTP",
        "Lý lịch tư pháp",
        Handler::Department("03"),
        Some(10),
        4,
        200_000,
        4.0,
    ),
    (
        "Đổi giấy phép lái xe do ngành Giao thông vận tải cấp",
        "DB",
        "Đường bộ",
        Handler::Department("08"),
        Some(5),
        4,
        135_000,
        4.5,
    ),
    (
        "Cấp chứng chỉ hành nghề khám bệnh, chữa bệnh",
        "KCB",
        "Khám bệnh, chữa bệnh",
        Handler::Department("16"),
        Some(20),
        3,
        360_000,
        0.6,
    ),
    (
        "Cấp giấy chứng nhận cơ sở đủ điều kiện an toàn thực phẩm",
        "ATTP",
        "An toàn thực phẩm",
        Handler::Department("16"),
        Some(15),
        3,
        700_000,
        0.5,
    ),
    (
        "Cấp bản sao văn bằng, chứng chỉ từ sổ gốc",
        "VBCC",
        "Văn bằng, chứng chỉ",
        Handler::Department("15"),
        None,
        4,
        0,
        0.8,
    ),
    (
        "Chuyển trường đối với học sinh trung học phổ thông",
        "GDTrH",
        "Giáo dục trung học",
        Handler::Department("15"),
        Some(3),
        4,
        0,
        0.5,
    ),
    (
        "Cấp giấy phép bán lẻ sản phẩm rượu",
        "LT",
        "Lưu thông hàng hóa trong nước",
        Handler::Department("06"),
        Some(10),
        4,
        1_200_000,
        0.4,
    ),
    (
        "Cấp Giấy chứng nhận cửa hàng đủ điều kiện bán lẻ xăng dầu",
        "KDXD",
        "Kinh doanh xăng dầu",
        Handler::Department("06"),
        Some(15),
        3,
        1_200_000,
        0.2,
    ),
    (
        "Cấp giấy chứng nhận cơ sở đủ điều kiện ATTP nông lâm thủy sản",
        "QLCL",
        "Quản lý chất lượng nông lâm thủy sản",
        Handler::Department("07"),
        Some(15),
        3,
        700_000,
        0.4,
    ),
    (
        "Cấp giấy phép kinh doanh dịch vụ karaoke",
        "VH",
        "Văn hóa cơ sở",
        Handler::Department("13"),
        Some(5),
        4,
        4_000_000,
        0.3,
    ),
    (
        "Cấp giấy phép xuất bản bản tin",
        "BC",
        "Báo chí",
        Handler::Department("11"),
        Some(10),
        4,
        0,
        0.1,
    ),
    (
        "Đăng ký kết quả thực hiện nhiệm vụ khoa học và công nghệ",
        "KHCN",
        "Hoạt động khoa học và công nghệ",
        Handler::Department("14"),
        Some(10),
        3,
        0,
        0.1,
    ),
    (
        "Xét tặng danh hiệu thi đua, hình thức khen thưởng",
        "TDKT",
        "Thi đua, khen thưởng",
        Handler::Department("02"),
        Some(20),
        3,
        0,
        0.5,
    ),
    (
        "Cấp mã số đơn vị có quan hệ với ngân sách",
        "QLNS",
        "Quản lý ngân sách",
        Handler::Department("05"),
        Some(2),
        4,
        0,
        0.6,
    ),
    (
        "Cấp giấy phép khai thác, sử dụng nước mặt",
        "TNN",
        "Tài nguyên nước",
        Handler::Department("10"),
        Some(30),
        3,
        1_500_000,
        0.1,
    ),
    (
        "Đăng ký biến động đất đai tại Văn phòng đăng ký đất đai tỉnh",
        "DD",
        "Đất đai",
        Handler::Department("10"),
        Some(10),
        3,
        50_000,
        1.5,
    ),
    (
        "Giải quyết khiếu nại lần đầu",
        "KN",
        "Giải quyết khiếu nại",
        Handler::Department("18"),
        Some(30),
        2,
        0,
        0.1,
    ),
    (
        "Cho phép tổ chức hội nghị, hội thảo quốc tế",
        "HTQT",
        "Hợp tác quốc tế",
        Handler::Department("17"),
        Some(10),
        3,
        0,
        0.1,
    ),
    (
        "Tiếp nhận, xử lý văn bản đề nghị của tổ chức, công dân",
        "HCC",
        "Hành chính công",
        Handler::Department("01"),
        Some(7),
        2,
        0,
        0.2,
    ),
];

pub fn procedures() -> Vec<Procedure> {
    PROCEDURES
        .iter()
        .enumerate()
        .map(
            |(i, &(name, field_code, field_name, handler, days, service_level, fee, weight))| {
                Procedure {
                    code: format!("1.{:06}.000.00.00.H42", 1000 + i * 137),
                    name,
                    field_code,
                    field_name,
                    handler,
                    days,
                    service_level,
                    fee_vnd: fee,
                    weight,
                }
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_the_contracts_units() {
        let old = old_communes();
        assert_eq!(DISTRICTS.len(), 13);
        assert_eq!(old.len(), 209);
        let new = new_communes(&old);
        assert_eq!(new.len(), 69);
        let mut names: Vec<&str> = new.iter().map(|c| c.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 69, "new communes have distinct names");
        let codes: std::collections::BTreeSet<_> =
            agencies().iter().map(|a| a.code.clone()).collect();
        assert_eq!(codes.len(), agencies().len(), "agency codes are unique");
    }
}
