//! Amounts of money as integers: TFT in units of 10^-7 TFT (the token's smallest unit on
//! Stellar), USD in millionths. Ledger sums never meet a float.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// TFT units in one TFT.
pub const TFT_UNITS: i64 = 10_000_000;
/// Micro-dollars in one USD: prices and rates are set in these.
pub const MICRO_USD: u64 = 1_000_000;
/// Digits after the point a TFT amount has.
const DECIMALS: usize = 7;

/// An amount of TFT, in units of 10^-7 TFT; negative for a debit.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Tft(pub i64);

/// Why a TFT amount could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an amount of TFT: {why} (write it as 12 or 0.5, at most 7 decimals)")]
pub struct TftParseError {
    input: String,
    why: &'static str,
}

impl fmt::Display for Tft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / TFT_UNITS as u64;
        let frac = abs % TFT_UNITS as u64;
        if frac == 0 {
            return write!(f, "{sign}{whole}");
        }
        let digits = format!("{frac:0DECIMALS$}");
        write!(f, "{sign}{whole}.{}", digits.trim_end_matches('0'))
    }
}

impl FromStr for Tft {
    type Err = TftParseError;

    /// Reads a non-negative decimal amount (at most 7 decimals).
    fn from_str(s: &str) -> Result<Tft, TftParseError> {
        parse_decimal(s, DECIMALS)
            .map(Tft)
            .map_err(|why| TftParseError {
                input: s.chars().take(40).collect(),
                why,
            })
    }
}

/// Reads a non-negative decimal with at most `decimals` digits after the point as an
/// integer of the smallest unit. Exactness matters more than convenience with money, so
/// exponents, signs, separators and an extra decimal are refused rather than rounded.
pub fn parse_decimal(s: &str, decimals: usize) -> Result<i64, &'static str> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the whole part must be digits");
    }
    if s.contains('.') && frac.is_empty() {
        return Err("digits must follow the point");
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the decimals must be digits");
    }
    if frac.len() > decimals {
        return Err("too many decimals");
    }
    let scale = 10i64.pow(decimals as u32);
    let whole: i64 = whole.parse().map_err(|_| "too large")?;
    let frac: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<decimals$}")
            .parse()
            .map_err(|_| "bad decimals")?
    };
    whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(frac))
        .ok_or("too large")
}

/// Reads a USD amount (`2.4`, `0.005`; at most 6 decimals) as µUSD.
pub fn parse_usd(s: &str) -> Result<u64, String> {
    parse_decimal(s, 6).map(|v| v as u64).map_err(|why| {
        format!(
            "{:?} is not an amount of USD: {why} (write it as 2.4 or 0.005, at most 6 decimals)",
            s.chars().take(40).collect::<String>()
        )
    })
}

/// µUSD written as USD with as many decimals as it needs (`2.4`, `0.005`).
pub fn format_usd(micro: u64) -> String {
    let whole = micro / MICRO_USD;
    let frac = micro % MICRO_USD;
    if frac == 0 {
        return whole.to_string();
    }
    format!("{whole}.{}", format!("{frac:06}").trim_end_matches('0'))
}

/// TFT bought by `micro_usd` at `price` micro-dollars per TFT, rounded down to a whole unit
/// (the grid never mints a fraction it cannot account for); `None` without a price.
pub fn tft_for_usd(micro_usd: u64, price: u64) -> Option<Tft> {
    if price == 0 {
        return None;
    }
    let units = u128::from(micro_usd) * TFT_UNITS as u128 / u128::from(price);
    Some(Tft(i64::try_from(units).unwrap_or(i64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_print_exactly() {
        assert_eq!(Tft(0).to_string(), "0");
        assert_eq!(Tft(1).to_string(), "0.0000001");
        assert_eq!(Tft(125_000_000).to_string(), "12.5");
        assert_eq!(Tft(-30_000_000).to_string(), "-3");
        assert_eq!(Tft(i64::MIN).to_string(), "-922337203685.4775808");
    }

    #[test]
    fn amounts_parse_exactly_or_not_at_all() {
        assert_eq!("12.5".parse(), Ok(Tft(125_000_000)));
        assert_eq!("0.0000001".parse(), Ok(Tft(1)));
        assert_eq!("7".parse(), Ok(Tft(70_000_000)));
        for bad in [
            "",
            ".5",
            "1.2.3",
            "5.",
            "-1",
            "+1",
            "1e3",
            "1,5",
            "0.00000001",
            " 1",
            "1 ",
            "１",
            "99999999999999999999",
        ] {
            assert!(bad.parse::<Tft>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn usd_amounts_parse_and_print_exactly() {
        assert_eq!(parse_usd("2.4"), Ok(2_400_000));
        assert_eq!(parse_usd("0.000001"), Ok(1));
        assert!(parse_usd("0.0000001").is_err());
        assert!(parse_usd("-1").is_err());
        assert_eq!(format_usd(2_400_000), "2.4");
        assert_eq!(format_usd(5_000), "0.005");
        assert_eq!(format_usd(35_508_000), "35.508");
    }

    #[test]
    fn usd_converts_at_the_price_rounding_down() {
        // 2.40 USD at 0.016 USD per TFT = 150 TFT.
        assert_eq!(tft_for_usd(2_400_000, 16_000), Some(Tft(150 * TFT_UNITS)));
        // 1 µUSD at 3 µUSD per TFT = 0.3333333 TFT (the last third of a unit is not minted).
        assert_eq!(tft_for_usd(1, 3), Some(Tft(3_333_333)));
        assert_eq!(tft_for_usd(5, 0), None);
        assert_eq!(tft_for_usd(u64::MAX, 1), Some(Tft(i64::MAX)));
    }

    proptest::proptest! {
        #[test]
        fn printing_then_parsing_gives_the_amount_back(units in 0i64..i64::MAX) {
            proptest::prop_assert_eq!(Tft(units).to_string().parse::<Tft>(), Ok(Tft(units)));
        }
    }
}
