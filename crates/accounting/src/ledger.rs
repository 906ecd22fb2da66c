//! The ledger's rules that need no database: account names, and that a transaction's
//! entries add up to zero.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::money::Tft;

/// A ledger account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Account {
    /// A twin's TFT.
    Twin(i64),
    /// Where farming rewards come from: its balance is minus everything ever minted.
    Mint,
    /// Where TFT brought in from outside the grid comes from.
    Deposits,
}

/// Why an account name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a ledger account: use twin:ID, mint or deposits")]
pub struct AccountParseError(String);

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::Twin(id) => write!(f, "twin:{id}"),
            Account::Mint => f.write_str("mint"),
            Account::Deposits => f.write_str("deposits"),
        }
    }
}

impl FromStr for Account {
    type Err = AccountParseError;

    /// One spelling per account (`twin:7`, never `twin:07` or `TWIN:7`), so one account
    /// never has two rows of balance.
    fn from_str(s: &str) -> Result<Account, AccountParseError> {
        let err = || AccountParseError(s.chars().take(40).collect());
        match s {
            "mint" => Ok(Account::Mint),
            "deposits" => Ok(Account::Deposits),
            _ => {
                let id = s.strip_prefix("twin:").ok_or_else(err)?;
                if id.is_empty() || id.starts_with('0') || !id.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err());
                }
                id.parse().map(Account::Twin).map_err(|_| err())
            }
        }
    }
}

impl Serialize for Account {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Account {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Account, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One line of a transaction: `amount` added to `account` (negative: taken from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Posting {
    /// The account.
    pub account: Account,
    /// What it gains.
    pub amount: Tft,
}

/// Why a transaction cannot be booked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unbooked {
    /// The entries do not add up to zero: money would appear or vanish.
    #[error("the entries add up to {0} TFT, not 0")]
    Unbalanced(Tft),
    /// Fewer than two entries, or an entry of nothing.
    #[error("a transaction moves a non-zero amount between at least two entries")]
    Empty,
    /// An amount at the edge of the 64-bit range.
    #[error("an amount is out of range")]
    OutOfRange,
}

/// A transaction the ledger accepts: at least two non-zero entries adding up to zero.
pub fn check_balanced(postings: &[Posting]) -> Result<(), Unbooked> {
    if postings.len() < 2 || postings.iter().any(|p| p.amount.0 == 0) {
        return Err(Unbooked::Empty);
    }
    let mut sum: i128 = 0;
    for p in postings {
        if p.amount.0 == i64::MIN {
            return Err(Unbooked::OutOfRange);
        }
        sum += i128::from(p.amount.0);
    }
    if sum != 0 {
        return Err(Unbooked::Unbalanced(Tft(
            i64::try_from(sum).unwrap_or(if sum > 0 { i64::MAX } else { i64::MIN + 1 })
        )));
    }
    Ok(())
}

/// `amount` moved from `from` to `to`.
pub fn transfer(from: Account, to: Account, amount: Tft) -> [Posting; 2] {
    [
        Posting {
            account: from,
            amount: Tft(amount.0.saturating_neg()),
        },
        Posting {
            account: to,
            amount,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_have_one_spelling() {
        for (s, a) in [
            ("twin:7", Account::Twin(7)),
            ("mint", Account::Mint),
            ("deposits", Account::Deposits),
        ] {
            assert_eq!(s.parse::<Account>(), Ok(a));
            assert_eq!(a.to_string(), s);
        }
        for bad in [
            "twin:07",
            "twin:",
            "twin:-1",
            "TWIN:7",
            "Mint",
            "twin:7 ",
            "twin:99999999999999999999",
            "farm:1",
            "",
        ] {
            assert!(bad.parse::<Account>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn only_balanced_transactions_are_booked() {
        assert_eq!(
            check_balanced(&transfer(Account::Mint, Account::Twin(1), Tft(5))),
            Ok(())
        );
        let lopsided = [
            Posting {
                account: Account::Mint,
                amount: Tft(-5),
            },
            Posting {
                account: Account::Twin(1),
                amount: Tft(4),
            },
        ];
        assert_eq!(
            check_balanced(&lopsided),
            Err(Unbooked::Unbalanced(Tft(-1)))
        );
        assert_eq!(
            check_balanced(&transfer(Account::Mint, Account::Twin(1), Tft(0))),
            Err(Unbooked::Empty)
        );
        assert_eq!(check_balanced(&lopsided[..1]), Err(Unbooked::Empty));
        let edge = [
            Posting {
                account: Account::Mint,
                amount: Tft(i64::MIN),
            },
            Posting {
                account: Account::Twin(1),
                amount: Tft(i64::MAX),
            },
        ];
        assert_eq!(check_balanced(&edge), Err(Unbooked::OutOfRange));
    }

    proptest::proptest! {
        #[test]
        fn a_transfer_always_balances(amount in 1i64..i64::MAX, a in 1i64..1000, b in 1i64..1000) {
            proptest::prop_assert_eq!(check_balanced(&transfer(Account::Twin(a), Account::Twin(b), Tft(amount))), Ok(()));
        }
    }
}
