//! The paging parameters of list routes, checked in one place: `limit` from 1 to 500 (50 by
//! default) and `offset` from 0 to `MAX_OFFSET`. Anything else answers 400 `invalid_query`,
//! never a database error.

use crate::domain::Error;

/// The largest offset accepted: far beyond any list here, and well inside the signed 64-bit
/// integers both databases use.
pub const MAX_OFFSET: u64 = 1 << 40;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

/// A checked page of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    pub offset: u64,
}

pub fn page(limit: Option<u32>, offset: Option<u64>) -> Result<Page, Error> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::invalid("invalid_query", format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    let offset = offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(Error::invalid("invalid_query", format!("offset must be between 0 and {MAX_OFFSET}")));
    }
    Ok(Page { limit, offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_range_checked() {
        assert_eq!(page(None, None).unwrap(), Page { limit: 50, offset: 0 });
        assert_eq!(page(Some(500), Some(MAX_OFFSET)).unwrap(), Page { limit: 500, offset: MAX_OFFSET });
        for (limit, offset) in [(Some(0), None), (Some(501), None), (None, Some(MAX_OFFSET + 1)), (None, Some(u64::MAX))] {
            assert_eq!(page(limit, offset).unwrap_err().code(), "invalid_query", "{limit:?} {offset:?}");
        }
    }
}
