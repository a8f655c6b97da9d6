//! `tally audit export`: a tenant's ledger for finance (`AuditService.ExportLedger`) written as CSV (each
//! record's first column names its kind, a header line starting each kind) or JSON lines, and what it came
//! to — whether the books balance — for standard error.

use crate::cli::{ExportFormat, Target};
use crate::client::ClientError;

/// What `tally audit export` wrote: a line for standard error.
pub async fn export(
    tenant: String,
    from: Option<i64>,
    end: tally_proto::v1::export_ledger_request::End,
    format: ExportFormat,
    out: Option<&std::path::Path>,
    target: &Target,
) -> Result<String, ClientError> {
    use tally_proto::v1::export_ledger_response::Item;
    let request = tally_proto::v1::ExportLedgerRequest { tenant_id: tenant, from: from.map(crate::status::timestamp), end: Some(end) };
    let mut stream = crate::auditctl::connect(target).await?.export_ledger(request).await.map_err(ClientError::Call)?.into_inner();
    // A file is written beside its name and renamed once complete: an interrupted export leaves
    // `<out>.partial`, never a file that looks whole.
    let partial = out.map(|path| {
        let mut name = path.as_os_str().to_owned();
        name.push(".partial");
        std::path::PathBuf::from(name)
    });
    let sink: Box<dyn std::io::Write> = match &partial {
        Some(path) => {
            Box::new(std::fs::File::create(path).map_err(|e| ClientError::Direct(format!("cannot create {}: {e}", path.display())))?)
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let mut writer = LedgerWriter::new(format, std::io::BufWriter::new(sink));
    let mut last = None;
    while let Some(message) = stream.message().await.map_err(ClientError::Call)? {
        match message.item {
            Some(Item::Row(row)) => writer.row(&row),
            Some(Item::Wallet(wallet)) => writer.wallet(&wallet),
            Some(Item::Reconciliation(r)) => {
                let written = writer.reconciliation(&r);
                last = Some(r);
                written
            }
            None => Ok(()),
        }
        .map_err(|e| ClientError::Direct(format!("cannot write the export: {e}")))?;
    }
    writer.finish().map_err(|e| ClientError::Direct(format!("cannot write the export: {e}")))?;
    let r = last.ok_or_else(|| ClientError::Direct("the export ended before its reconciliation: it is incomplete".into()))?;
    let figures = [r.issued, r.purchased, -r.redeemed, -r.reversed, r.adjusted, -r.forfeited, -r.expired, r.transferred];
    let balances =
        i128::from(r.opening_liability) + figures.iter().map(|f| i128::from(*f)).sum::<i128>() == i128::from(r.closing_liability);
    if let (Some(partial), Some(out)) = (&partial, out) {
        std::fs::rename(partial, out)
            .map_err(|e| ClientError::Direct(format!("cannot rename {} to {}: {e}", partial.display(), out.display())))?;
    }
    let verdict = if balances { "the books balance" } else { "THE BOOKS DO NOT BALANCE" };
    let summary = format!(
        "{} movements of {} wallets, to log position {}; {verdict}: opening {} + issued {} + purchased {} - redeemed {} - reversed {} + adjusted {} - forfeited {} - expired {} + transferred {} = closing {}",
        r.rows,
        r.wallets,
        r.as_of_position,
        r.opening_liability,
        r.issued,
        r.purchased,
        r.redeemed,
        r.reversed,
        r.adjusted,
        r.forfeited,
        r.expired,
        r.transferred,
        r.closing_liability
    );
    if balances { Ok(summary) } else { Err(ClientError::Direct(summary)) }
}

/// A text field as a spreadsheet will show it: one that starts like a formula (`=`, `+`, `-`, `@`, a tab
/// or a carriage return) gets a leading `'`, so opening the file runs nothing a client typed.
fn cell(text: &str) -> std::borrow::Cow<'_, str> {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{text}").into() } else { text.into() }
}

/// Writes an export as CSV (each record's first column names its kind; a header line starts each kind)
/// or JSON lines.
struct LedgerWriter<W: std::io::Write> {
    format: ExportFormat,
    csv: Option<csv::Writer<W>>,
    jsonl: Option<W>,
    /// The kind whose header was written last (CSV).
    section: &'static str,
}

impl<W: std::io::Write> LedgerWriter<W> {
    fn new(format: ExportFormat, out: W) -> Self {
        match format {
            ExportFormat::Csv => {
                Self { format, csv: Some(csv::WriterBuilder::new().flexible(true).from_writer(out)), jsonl: None, section: "" }
            }
            ExportFormat::Jsonl => Self { format, csv: None, jsonl: Some(out), section: "" },
        }
    }

    fn record<I: IntoIterator<Item = T>, T: AsRef<[u8]>>(&mut self, fields: I) -> std::io::Result<()> {
        match &mut self.csv {
            Some(csv) => Ok(csv.write_record(fields)?),
            None => Ok(()),
        }
    }

    fn header(&mut self, section: &'static str, columns: &[&str]) -> std::io::Result<()> {
        if self.section != section {
            self.section = section;
            self.record(std::iter::once("record").chain(columns.iter().copied()))?;
        }
        Ok(())
    }

    fn json(&mut self, value: &serde_json::Value) -> std::io::Result<()> {
        let line = serde_json::to_string(value).expect("JSON values serialize");
        match &mut self.jsonl {
            Some(out) => writeln!(out, "{line}"),
            None => Ok(()),
        }
    }

    fn row(&mut self, r: &tally_proto::v1::LedgerRow) -> std::io::Result<()> {
        let at = r.recorded_at.map(|t| t.to_string()).unwrap_or_default();
        let expires = r.expires_at.map(|t| t.to_string()).unwrap_or_default();
        // "lot:points" pairs, `;` between them.
        let lots = r.lots.iter().map(|l| format!("{}:{}", l.lot, l.points)).collect::<Vec<_>>().join(";");
        if self.format == ExportFormat::Jsonl {
            return self.json(&serde_json::json!({
                "record": "movement", "position": r.position, "recorded_at": at, "wallet_id": r.wallet_id,
                "stream_version": r.stream_version, "kind": r.kind, "points": r.points, "reference": r.reference,
                "reason": r.reason, "idempotency_key": r.idempotency_key, "principal": r.principal, "event_type": r.event_type,
                "lots": r.lots.iter().map(|l| serde_json::json!({"lot": l.lot, "points": l.points})).collect::<Vec<_>>(),
                "expires_at": r.expires_at.map(|t| t.to_string()),
            }));
        }
        self.header(
            "movement",
            &[
                "position",
                "recorded_at",
                "wallet_id",
                "stream_version",
                "kind",
                "points",
                "reference",
                "reason",
                "idempotency_key",
                "principal",
                "event_type",
                "lots",
                "expires_at",
            ],
        )?;
        let (position, version, points) = (r.position.to_string(), r.stream_version.to_string(), r.points.to_string());
        self.record([
            "movement",
            &position,
            &at,
            &cell(&r.wallet_id),
            &version,
            &r.kind,
            &points,
            &cell(&r.reference),
            &cell(&r.reason),
            &cell(&r.idempotency_key),
            &cell(&r.principal),
            &r.event_type,
            &lots,
            &expires,
        ])
    }

    fn wallet(&mut self, w: &tally_proto::v1::WalletBalance) -> std::io::Result<()> {
        if self.format == ExportFormat::Jsonl {
            return self.json(&serde_json::json!({
                "record": "wallet", "wallet_id": w.wallet_id, "opening_balance": w.opening_balance, "closing_balance": w.closing_balance,
            }));
        }
        self.header("wallet", &["wallet_id", "opening_balance", "closing_balance"])?;
        self.record(["wallet", &cell(&w.wallet_id), &w.opening_balance.to_string(), &w.closing_balance.to_string()])
    }

    fn reconciliation(&mut self, r: &tally_proto::v1::LedgerReconciliation) -> std::io::Result<()> {
        let figures = [
            ("as_of_position", i128::from(r.as_of_position)),
            ("opening_liability", r.opening_liability.into()),
            ("issued", r.issued.into()),
            ("purchased", r.purchased.into()),
            ("redeemed", r.redeemed.into()),
            ("reversed", r.reversed.into()),
            ("adjusted", r.adjusted.into()),
            ("forfeited", r.forfeited.into()),
            ("expired", r.expired.into()),
            ("transferred", r.transferred.into()),
            ("closing_liability", r.closing_liability.into()),
            ("rows", r.rows.into()),
            ("wallets", r.wallets.into()),
        ];
        if self.format == ExportFormat::Jsonl {
            let mut object = serde_json::Map::from_iter([("record".to_owned(), "reconciliation".into())]);
            object.extend(
                figures
                    .iter()
                    .map(|(name, value)| ((*name).to_owned(), serde_json::Value::from(i64::try_from(*value).unwrap_or(i64::MAX)))),
            );
            return self.json(&serde_json::Value::Object(object));
        }
        let names: Vec<&str> = figures.iter().map(|(name, _)| *name).collect();
        self.header("reconciliation", &names)?;
        let values: Vec<String> = figures.iter().map(|(_, value)| value.to_string()).collect();
        self.record(std::iter::once("reconciliation".to_owned()).chain(values))
    }

    fn finish(self) -> std::io::Result<()> {
        match (self.csv, self.jsonl) {
            (Some(mut csv), _) => csv.flush(),
            (None, Some(mut out)) => out.flush(),
            (None, None) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cell;

    #[test]
    fn text_that_starts_like_a_formula_is_not_one_in_a_spreadsheet() {
        assert_eq!(cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(cell("+1"), "'+1");
        assert_eq!(cell("-5 points, sorry"), "'-5 points, sorry");
        assert_eq!(cell("@sum"), "'@sum");
        assert_eq!(cell("order-1"), "order-1");
        assert_eq!(cell(""), "");
    }
}
