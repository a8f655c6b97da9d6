//! When credited points expire, by the program's expiry policy (`tally.v1.ExpiryPolicy`). Pure calendar
//! arithmetic in the program's time zone; no clock, no floating point.

use tally_proto::v1::expiry_policy::Rule;
use tally_proto::v1::{ExpireAfter, ExpireOnDate, ExpiryPolicy};
use time::{Date, Duration, Month, OffsetDateTime, PrimitiveDateTime, UtcOffset};

use super::ids::FieldError;

/// Longest `ExpireAfter`: ten years.
const MONTHS_MAX: u32 = 120;
const DAYS_MAX: u32 = 3_660;
const YEARS_LATER_MAX: u32 = 10;
const NOTICE_DAYS_MAX: u32 = 365;

/// Checks a policy before it is recorded; the error names the field.
pub fn validate(policy: &ExpiryPolicy) -> Result<(), FieldError> {
    if policy.notice_days > NOTICE_DAYS_MAX {
        return Err(FieldError::new("policy.notice_days", format!("must be at most {NOTICE_DAYS_MAX}")));
    }
    match &policy.rule {
        None => Ok(()),
        Some(Rule::After(after)) => {
            if after.months > MONTHS_MAX {
                return Err(FieldError::new("policy.after.months", format!("must be at most {MONTHS_MAX}")));
            }
            if after.days > DAYS_MAX {
                return Err(FieldError::new("policy.after.days", format!("must be at most {DAYS_MAX}")));
            }
            if after.months == 0 && after.days == 0 && !after.at_month_end {
                return Err(FieldError::new("policy.after", "must give months, days or at_month_end: points cannot expire at once"));
            }
            Ok(())
        }
        Some(Rule::Inactivity(inactivity)) => {
            if !(1..=MONTHS_MAX).contains(&inactivity.months) {
                return Err(FieldError::new("policy.inactivity.months", format!("must be within 1..={MONTHS_MAX}")));
            }
            Ok(())
        }
        Some(Rule::OnDate(on)) => {
            if !(1..=12).contains(&on.month) {
                return Err(FieldError::new("policy.on_date.month", "must be within 1..=12"));
            }
            if !(1..=31).contains(&on.day) {
                return Err(FieldError::new("policy.on_date.day", "must be within 1..=31"));
            }
            if on.years_later > YEARS_LATER_MAX {
                return Err(FieldError::new("policy.on_date.years_later", format!("must be at most {YEARS_LATER_MAX}")));
            }
            Ok(())
        }
    }
}

/// When points credited at `credited_at_ms` expire under `policy`, in a program `utc_offset_minutes` east
/// of UTC; `None`: never. The policy must have passed [`validate`]; an instant beyond the calendar's
/// range is treated as never.
pub fn expires_at(policy: &ExpiryPolicy, credited_at_ms: i64, utc_offset_minutes: i32) -> Option<i64> {
    let offset = UtcOffset::from_whole_seconds(utc_offset_minutes.checked_mul(60)?).ok()?;
    let utc = OffsetDateTime::from_unix_timestamp_nanos(i128::from(credited_at_ms) * 1_000_000).ok()?;
    let local = utc.to_offset(offset);
    let local = PrimitiveDateTime::new(local.date(), local.time());
    let expiry = match policy.rule.as_ref()? {
        Rule::After(after) => after_period(after, local)?,
        Rule::OnDate(on) => on_date(on, local.date())?,
        // Lots have no date of their own: see `inactivity_deadline`.
        Rule::Inactivity(_) => return None,
    };
    let nanos = expiry.assume_offset(offset).unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).ok()
}

/// Under an inactivity policy, when the wallet's points expire if the customer does nothing after
/// `active_at_ms`; `None` under any other policy.
pub fn inactivity_deadline(policy: &ExpiryPolicy, active_at_ms: i64, utc_offset_minutes: i32) -> Option<i64> {
    let Some(Rule::Inactivity(inactivity)) = &policy.rule else { return None };
    let after = ExpireAfter { months: inactivity.months, days: 0, at_month_end: false };
    expires_at(&ExpiryPolicy { rule: Some(Rule::After(after)), notice_days: 0 }, active_at_ms, utc_offset_minutes)
}

/// Whether earned points expire with the wallet's inactivity rather than on a date.
pub fn on_inactivity(policy: &ExpiryPolicy) -> bool {
    matches!(policy.rule, Some(Rule::Inactivity(_)))
}

fn after_period(after: &ExpireAfter, local: PrimitiveDateTime) -> Option<PrimitiveDateTime> {
    let date = add_months(local.date(), after.months)?.checked_add(Duration::days(i64::from(after.days)))?;
    if after.at_month_end {
        // The end of that month: midnight starting the next one.
        let first = Date::from_calendar_date(date.year(), date.month(), 1).ok()?;
        return Some(add_months(first, 1)?.midnight());
    }
    Some(PrimitiveDateTime::new(date, local.time()))
}

fn on_date(on: &ExpireOnDate, credited: Date) -> Option<PrimitiveDateTime> {
    let month = Month::try_from(u8::try_from(on.month).ok()?).ok()?;
    let day_in = |year: i32| -> Option<Date> {
        let last = month.length(year);
        Date::from_calendar_date(year, month, u8::try_from(on.day).ok()?.min(last)).ok()
    };
    let this_year = day_in(credited.year())?;
    let first = if this_year >= credited { credited.year() } else { credited.year().checked_add(1)? };
    let year = first.checked_add(i32::try_from(on.years_later).ok()?)?;
    // The end of that day: midnight starting the next.
    Some(day_in(year)?.next_day()?.midnight())
}

/// `date` plus `months` calendar months; a day past the new month's end becomes its last day.
fn add_months(date: Date, months: u32) -> Option<Date> {
    let index = i64::from(date.year()) * 12 + i64::from(u8::from(date.month())) - 1 + i64::from(months);
    let year = i32::try_from(index.div_euclid(12)).ok()?;
    let month = Month::try_from(u8::try_from(index.rem_euclid(12) + 1).ok()?).ok()?;
    let day = date.day().min(month.length(year));
    Date::from_calendar_date(year, month, day).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn ms(at: OffsetDateTime) -> i64 {
        i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap()
    }

    fn after(months: u32, days: u32, at_month_end: bool) -> ExpiryPolicy {
        ExpiryPolicy { notice_days: 0, rule: Some(Rule::After(ExpireAfter { months, days, at_month_end })) }
    }

    fn on(month: u32, day: u32, years_later: u32) -> ExpiryPolicy {
        ExpiryPolicy { notice_days: 0, rule: Some(Rule::OnDate(ExpireOnDate { month, day, years_later })) }
    }

    #[test]
    fn no_rule_never_expires() {
        assert_eq!(expires_at(&ExpiryPolicy::default(), ms(datetime!(2026-03-01 10:00 UTC)), 0), None);
    }

    #[test]
    fn after_months_keeps_the_time_and_clamps_the_day() {
        let credited = ms(datetime!(2026-01-31 10:30 UTC));
        assert_eq!(expires_at(&after(1, 0, false), credited, 0), Some(ms(datetime!(2026-02-28 10:30 UTC))));
        assert_eq!(expires_at(&after(12, 0, false), credited, 0), Some(ms(datetime!(2027-01-31 10:30 UTC))));
        assert_eq!(expires_at(&after(0, 30, false), credited, 0), Some(ms(datetime!(2026-03-02 10:30 UTC))));
        assert_eq!(expires_at(&after(1, 1, false), ms(datetime!(2028-01-31 00:00 UTC)), 0), Some(ms(datetime!(2028-03-01 00:00 UTC))));
    }

    #[test]
    fn at_month_end_runs_to_the_end_of_the_local_month() {
        // 23:30 UTC on 31 May is already 1 June in UTC+2: twelve months later is June 2027, ending 1 July local.
        let credited = ms(datetime!(2026-05-31 23:30 UTC));
        assert_eq!(expires_at(&after(12, 0, true), credited, 120), Some(ms(datetime!(2027-07-01 00:00 +2))));
        assert_eq!(expires_at(&after(12, 0, true), credited, 0), Some(ms(datetime!(2027-06-01 00:00 UTC))));
    }

    #[test]
    fn on_date_is_the_end_of_the_first_such_day_on_or_after_the_credit() {
        let policy = on(12, 31, 1);
        assert_eq!(expires_at(&policy, ms(datetime!(2026-01-01 00:00 UTC)), 0), Some(ms(datetime!(2028-01-01 00:00 UTC))));
        assert_eq!(expires_at(&policy, ms(datetime!(2026-12-31 23:59 UTC)), 0), Some(ms(datetime!(2028-01-01 00:00 UTC))));
        // 30 June, no year later: points credited on 1 July last until the end of the next 30 June.
        assert_eq!(expires_at(&on(6, 30, 0), ms(datetime!(2026-07-01 08:00 UTC)), 0), Some(ms(datetime!(2027-07-01 00:00 UTC))));
        // 29 February in a common year is its 28th.
        assert_eq!(expires_at(&on(2, 29, 0), ms(datetime!(2027-01-10 08:00 UTC)), 0), Some(ms(datetime!(2027-03-01 00:00 UTC))));
        // In the program's time zone: 31 Dec 23:00 UTC is already 1 January in UTC+1.
        assert_eq!(expires_at(&on(12, 31, 0), ms(datetime!(2026-12-31 23:00 UTC)), 60), Some(ms(datetime!(2028-01-01 00:00 +1))));
    }

    #[test]
    fn bad_policies_name_their_field() {
        let field = |p: &ExpiryPolicy| validate(p).unwrap_err().field.into_owned();
        assert_eq!(field(&after(0, 0, false)), "policy.after");
        assert_eq!(field(&after(121, 0, false)), "policy.after.months");
        assert_eq!(field(&after(0, 4_000, false)), "policy.after.days");
        assert_eq!(field(&on(13, 1, 0)), "policy.on_date.month");
        assert_eq!(field(&on(1, 0, 0)), "policy.on_date.day");
        assert_eq!(field(&on(1, 1, 11)), "policy.on_date.years_later");
        assert!(validate(&after(0, 0, true)).is_ok());
    }
}
