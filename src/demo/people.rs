//! Applicants of the demo: Vietnamese personal names, citizen ID numbers, phones, addresses
//! and business names: the personal data the warehouse must never hold in clear.

use rand::Rng;

const SURNAMES: &[&str] = &[
    "Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Phan", "Võ", "Đặng", "Bùi", "Đỗ", "Hồ", "Ngô",
    "Dương", "Lý", "Đinh", "Thái", "Đoàn", "Tôn", "Hà", "Cao",
];
const MIDDLE_M: &[&str] = &[
    "Văn", "Hữu", "Đức", "Minh", "Quốc", "Xuân", "Công", "Đình", "Thanh",
];
const MIDDLE_F: &[&str] = &["Thị", "Thu", "Ngọc", "Thanh", "Minh", "Hồng", "Mai", "Kim"];
const GIVEN_M: &[&str] = &[
    "An", "Bình", "Cường", "Dũng", "Hải", "Hùng", "Khánh", "Long", "Nam", "Phong", "Quân", "Sơn",
    "Thắng", "Tuấn", "Việt", "Vinh", "Hiếu", "Trung", "Toàn", "Lộc",
];
const GIVEN_F: &[&str] = &[
    "Anh", "Hà", "Hạnh", "Hoa", "Hương", "Lan", "Linh", "Mai", "Nga", "Ngân", "Phương", "Thảo",
    "Trang", "Vân", "Yến", "Huyền", "Nhung", "Oanh", "Quyên", "Tâm",
];
const BUSINESS_WORDS: &[&str] = &[
    "Hồng Lam",
    "Sông La",
    "Thiên Cầm",
    "Vũng Áng",
    "Hoành Sơn",
    "Trà Sơn",
    "Kỳ Lĩnh",
    "Nghi Xuân",
    "Hà Tĩnh Xanh",
    "Cầu Treo",
    "Hải Phát",
    "Minh Tâm",
    "Đại Thành",
    "Phú Gia",
];
const BUSINESS_TRADES: &[&str] = &[
    "Xây dựng",
    "Thương mại và Dịch vụ",
    "Vận tải",
    "Nông sản",
    "Thủy sản",
    "Vật liệu xây dựng",
    "Du lịch",
    "Công nghệ",
    "Môi trường",
];

pub struct Applicant {
    pub name: String,
    pub id: String,
    pub phone: String,
    pub address: String,
}

/// A citizen: name, 12-digit citizen ID (or, before 2021, often a 9-digit identity card),
/// phone and village address in `commune`.
pub fn citizen(rng: &mut impl Rng, year: i32, commune: &str) -> Applicant {
    let female = rng.random_bool(0.5);
    let surname = SURNAMES[rng.random_range(0..SURNAMES.len())];
    let (middle, given) = if female {
        (
            MIDDLE_F[rng.random_range(0..MIDDLE_F.len())],
            GIVEN_F[rng.random_range(0..GIVEN_F.len())],
        )
    } else {
        (
            MIDDLE_M[rng.random_range(0..MIDDLE_M.len())],
            GIVEN_M[rng.random_range(0..GIVEN_M.len())],
        )
    };
    let birth_year: u32 = rng.random_range(1945..2006);
    let id = if year < 2021 && rng.random_bool(0.6) {
        // Old identity card of Hà Tĩnh: 9 digits starting 18.
        format!("18{:07}", rng.random_range(0..10_000_000u32))
    } else {
        let century_gender = match (birth_year >= 2000, female) {
            (false, false) => 0,
            (false, true) => 1,
            (true, false) => 2,
            (true, true) => 3,
        };
        // 042 is Hà Tĩnh's province code; some applicants were born elsewhere.
        let province = if rng.random_bool(0.88) {
            42
        } else {
            [40, 44, 1, 79][rng.random_range(0..4)]
        };
        format!(
            "{province:03}{century_gender}{:02}{:06}",
            birth_year % 100,
            rng.random_range(0..1_000_000u32)
        )
    };
    let phone = format!(
        "0{}{:08}",
        [9, 3, 8, 7][rng.random_range(0..4)],
        rng.random_range(0..100_000_000u32)
    );
    Applicant {
        name: format!("{surname} {middle} {given}"),
        id,
        phone,
        address: format!("Thôn {}, {commune}, tỉnh Hà Tĩnh", rng.random_range(1..16)),
    }
}

/// A business: company name, 10-digit tax code, office phone and address.
pub fn business(rng: &mut impl Rng, commune: &str) -> Applicant {
    let form = if rng.random_bool(0.6) {
        "Công ty TNHH"
    } else {
        "Công ty Cổ phần"
    };
    Applicant {
        name: format!(
            "{form} {} {}",
            BUSINESS_TRADES[rng.random_range(0..BUSINESS_TRADES.len())],
            BUSINESS_WORDS[rng.random_range(0..BUSINESS_WORDS.len())]
        ),
        id: format!("300{:07}", rng.random_range(0..10_000_000u32)),
        phone: format!("0239{:07}", rng.random_range(0..10_000_000u32)),
        address: format!(
            "Số {} đường {}, {commune}, tỉnh Hà Tĩnh",
            rng.random_range(1..300),
            ["Trần Phú", "Hà Huy Tập", "Nguyễn Du", "Phan Đình Phùng"][rng.random_range(0..4)]
        ),
    }
}
