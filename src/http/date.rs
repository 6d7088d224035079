//! The `date` header: the current second's IMF-fixdate, formatted at most once a second per
//! thread (every response carries one; formatting it per response showed in profiles).

use http::HeaderValue;
use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

struct Cached {
    secs: u64,
    text: [u8; 29],
    /// The same text as a header value, made on first use in its second; a clone is a
    /// reference count, not a copy.
    value: Option<HeaderValue>,
}

thread_local! {
    static DATE: RefCell<Cached> = const {
        RefCell::new(Cached { secs: u64::MAX, text: [0; 29], value: None })
    };
}

fn with<R>(f: impl FnOnce(&mut Cached) -> R) -> R {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.secs != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                d.text.copy_from_slice(text.as_bytes());
                d.secs = secs;
                d.value = None;
            }
        }
        f(&mut d)
    })
}

/// The current date as bytes, for codecs that write heads themselves.
pub fn now() -> [u8; 29] {
    with(|d| d.text)
}

/// The current date as a header value, for codecs that send headers as a map.
pub fn value() -> HeaderValue {
    with(|d| {
        if d.value.is_none() {
            d.value = HeaderValue::from_bytes(&d.text).ok();
        }
        d.value
            .clone()
            .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_an_imf_fixdate_shared_by_both_forms() {
        let v = super::value();
        let text = std::str::from_utf8(&super::now()).unwrap().to_string();
        assert!(text.ends_with(" GMT") && text.len() == 29, "{text}");
        // The same second, unless the clock ticked between the two calls.
        assert!(v == text.as_str() || httpdate::parse_http_date(v.to_str().unwrap()).is_ok());
        assert!(httpdate::parse_http_date(&text).is_ok());
    }
}
