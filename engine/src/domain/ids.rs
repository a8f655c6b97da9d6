//! Validated identifiers: tenants (programs) and wallets.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::limits::{TENANT_ID_BYTES_MAX, WALLET_ID_BYTES_MAX};

/// A bad input field: which one, and why. Lowercase, no trailing period, safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// The field's path, e.g. `customer_ref` or `order.lines[3].quantity`.
    pub field: Cow<'static, str>,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

fn check_id(field: &'static str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(FieldError::new(field, format!("must be at most {max} bytes")));
    }
    if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))) {
        return Err(FieldError::new(field, format!("contains {bad:?}; allowed are A-Z a-z 0-9 - _ . :")));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `value`: 1 to the limit's bytes of `A-Z a-z 0-9 - _ . :`.
            pub fn parse(value: &str) -> Result<Self, FieldError> {
                check_id($field, value, $max)?;
                Ok(Self(Arc::from(value)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

id_type!(
    /// A tenant: one loyalty program (a shop or a brand). Nothing crosses a tenant line.
    TenantId,
    "tenant_id",
    TENANT_ID_BYTES_MAX
);
id_type!(
    /// A wallet within a tenant; chosen by the client (usually its customer id).
    WalletId,
    "wallet_id",
    WALLET_ID_BYTES_MAX
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated_with_the_field_named() {
        assert_eq!(TenantId::parse("acme-shop_1.eu:x").unwrap().as_str(), "acme-shop_1.eu:x");
        assert_eq!(TenantId::parse("").unwrap_err().to_string(), "tenant_id: must not be empty");
        let err = WalletId::parse("a/b").unwrap_err();
        assert_eq!(err.field, "wallet_id");
        assert!(err.reason.contains("'/'"), "{err}");
        assert!(WalletId::parse(&"x".repeat(65)).unwrap_err().reason.contains("at most 64"));
        assert!(WalletId::parse(&"x".repeat(64)).is_ok());
    }
}
