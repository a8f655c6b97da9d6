//! `tally audit export`: a tenant's ledger for finance (`AuditService.ExportLedger`) written as CSV (each
//! record's first column names its kind, a header line starting each kind) or JSON lines, and what it came
//! to — whether the books balance — for standard error.

use tally_proto::v1::audit_service_client::AuditServiceClient;

use crate::cli::{ExportFormat, Target};
use crate::client::ClientError;
use crate::credentials;
use crate::limits::REPLY_BYTES_MAX;

/// What `tally audit export` wrote: a line for standard error.
pub async fn export(
    tenant: String,
    from: Option<i64>,
    to: i64,
    format: ExportFormat,
    out: Option<&std::path::Path>,
    target: &Target,
) -> Result<String, ClientError> {
    use tally_proto::v1::export_ledger_response::Item;
    let request = tally_proto::v1::ExportLedgerRequest { tenant_id: tenant, from: from.map(timestamp), to: Some(timestamp(to)) };
    let mut stream = connect(target).await?.export_ledger(request).await.map_err(ClientError::Call)?.into_inner();
    let sink: Box<dyn std::io::Write> = match out {
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
    let net = r.issued + r.purchased - r.redeemed - r.reversed + r.adjusted - r.forfeited - r.expired;
    let verdict = if r.opening_liability + net == r.closing_liability { "the books balance" } else { "THE BOOKS DO NOT BALANCE" };
    Ok(format!(
        "{} movements of {} wallets, to log position {}; {verdict}: opening {} + issued {} + purchased {} - redeemed {} - reversed {} + adjusted {} - forfeited {} - expired {} = closing {}",
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
        r.closing_liability
    ))
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
        if self.format == ExportFormat::Jsonl {
            return self.json(&serde_json::json!({
                "record": "movement", "position": r.position, "recorded_at": at, "wallet_id": r.wallet_id,
                "stream_version": r.stream_version, "kind": r.kind, "points": r.points, "reference": r.reference,
                "reason": r.reason, "idempotency_key": r.idempotency_key, "principal": r.principal, "event_type": r.event_type,
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
            ],
        )?;
        let (position, version, points) = (r.position.to_string(), r.stream_version.to_string(), r.points.to_string());
        self.record([
            "movement",
            &position,
            &at,
            &r.wallet_id,
            &version,
            &r.kind,
            &points,
            &r.reference,
            &r.reason,
            &r.idempotency_key,
            &r.principal,
            &r.event_type,
        ])
    }

    fn wallet(&mut self, w: &tally_proto::v1::WalletBalance) -> std::io::Result<()> {
        if self.format == ExportFormat::Jsonl {
            return self.json(&serde_json::json!({
                "record": "wallet", "wallet_id": w.wallet_id, "opening_balance": w.opening_balance, "closing_balance": w.closing_balance,
            }));
        }
        self.header("wallet", &["wallet_id", "opening_balance", "closing_balance"])?;
        self.record(["wallet", &w.wallet_id, &w.opening_balance.to_string(), &w.closing_balance.to_string()])
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

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0) }
}

async fn connect(target: &Target) -> Result<AuditServiceClient<credentials::Authed>, ClientError> {
    credentials::connect(&target.server, target.key.bearer_for(&target.server)?)
        .await
        .map(|channel| AuditServiceClient::new(channel).max_decoding_message_size(REPLY_BYTES_MAX))
        .map_err(|source| ClientError::Connect { server: target.server.clone(), source })
}
