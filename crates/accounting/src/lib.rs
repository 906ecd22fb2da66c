//! The grid's accounting, as pure functions: minting periods and uptime from signed reports
//! (DESIGN.md, "Minting"), farming rewards with a receipt that lists every input, hourly
//! bills of contracts, and TFT amounts in integer units.
//!
//! The registry books what these functions compute; `grid audit` runs them again on reports
//! it verified itself. No I/O here, so both sides compute the same figures from the same
//! inputs and a difference means the inputs differ.

pub mod bill;
pub mod ledger;
pub mod money;
pub mod reward;
pub mod uptime;

pub use bill::{bill, BillInput, BillLine, Pricing};
pub use ledger::{check_balanced, transfer, Account, Posting, Unbooked};
pub use money::{format_usd, parse_usd, tft_for_usd, Tft, TftParseError, MICRO_USD, TFT_UNITS};
pub use reward::{
    capacities_in, price_at, reward, FarmingPolicy, Outcome, Rates, Receipt, RewardInput,
};
pub use uptime::{
    account, is_violation, Period, Sample, Uptime, Violation, PERIOD_SECS, TOLERANCE_SECS,
};
