//! `tally audit replay|program`: wallets and programs as they were, through `AuditService`, as text for a
//! person or `--json` for a script. `--diff` shows a wallet at two instants, every event between them
//! and the figures that changed.

use std::fmt::Write as _;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tally_engine::audit::checkpoint::{self, Checkpoint, hex};
use tally_engine::audit::verify;
use tally_engine::store::chain::Hash;
use tally_engine::store::{EventStore, StreamId, existing_log_identity};
use tally_proto::v1::audit_service_client::AuditServiceClient;
use tally_proto::v1::{
    ProgramAsOfRequest, ProgramAsOfResponse, StoppedAt, WalletAsOfRequest, WalletAsOfResponse, WalletChangesRequest, program_as_of_request,
    wallet_as_of_request,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cli::{AsOfArgs, AuditCommand, CheckpointArgs, Target, VerifyArgs, WalletRef};
use crate::client::{ClientError, TransactionView, WalletView, output, render_transaction, render_wallet, transaction_view, wallet_view};
use crate::credentials::{self, Authed};
use crate::limits::REPLY_BYTES_MAX;

/// Milliseconds since the epoch of `text`: RFC 3339, RFC 3339 without seconds, or a date (its midnight,
/// UTC).
pub fn parse_instant(text: &str) -> Result<i64, String> {
    let full = match text.len() {
        // 2026-03-01
        10 => format!("{text}T00:00:00Z"),
        // 2026-03-01T00:00Z, 2026-03-01T00:00+01:00: seconds left out
        _ if text.get(13..14) == Some(":") && text.get(16..17).is_none_or(|c| c != ":") => {
            format!("{}:00{}", text.get(..16).unwrap_or(text), text.get(16..).unwrap_or(""))
        }
        _ => text.to_owned(),
    };
    let at = OffsetDateTime::parse(&full, &Rfc3339)
        .map_err(|_| format!("{text:?} is not a time: use 2026-03-01T00:00:00Z, 2026-03-01T00:00Z or 2026-03-01"))?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).map_err(|_| format!("{text:?} is out of range"))
}

#[derive(Debug, Serialize)]
struct StoppedAtView {
    stream_version: u64,
    global_position: u64,
    recorded_at: Option<String>,
    event_type: String,
}

#[derive(Debug, Serialize)]
struct LotView {
    lot: u64,
    points: i64,
    held: i64,
    expires_at: Option<String>,
    on_inactivity: bool,
}

#[derive(Debug, Serialize)]
struct HoldView {
    hold_id: String,
    points: i64,
    reward_ref: String,
    expires_at: Option<String>,
}

#[derive(Debug, Serialize)]
struct PendingView {
    version: u64,
    points: i64,
    source_ref: String,
    available_at: Option<String>,
    expires_at: Option<String>,
}

#[derive(Debug, Serialize)]
struct AsOfView {
    evaluated_at: Option<String>,
    stopped_at: Option<StoppedAtView>,
    rules_version: u32,
    wallet: Option<WalletView>,
    lots: Vec<LotView>,
    holds: Vec<HoldView>,
    pending: Vec<PendingView>,
    debt: i64,
    orders_placed: u64,
    inactivity_expires_at: Option<String>,
}

/// A figure that differs between the two instants.
#[derive(Debug, Serialize)]
struct Difference {
    field: String,
    before: serde_json::Value,
    after: serde_json::Value,
}

#[derive(Debug, Serialize)]
struct DiffView {
    from: AsOfView,
    to: AsOfView,
    /// Every event after `from`'s last up to `to`'s, oldest first.
    changes: Vec<TransactionView>,
    differences: Vec<Difference>,
}

fn stopped_at_view(s: StoppedAt) -> StoppedAtView {
    StoppedAtView {
        stream_version: s.stream_version,
        global_position: s.global_position,
        recorded_at: s.recorded_at.map(|t| t.to_string()),
        event_type: s.event_type,
    }
}

fn as_of_view(r: WalletAsOfResponse) -> AsOfView {
    let text = |t: Option<prost_types::Timestamp>| t.map(|t| t.to_string());
    AsOfView {
        evaluated_at: text(r.evaluated_at),
        stopped_at: r.stopped_at.map(stopped_at_view),
        rules_version: r.rules_version,
        wallet: r.wallet.map(wallet_view),
        lots: r
            .lots
            .into_iter()
            .map(|l| LotView { lot: l.lot, points: l.points, held: l.held, expires_at: text(l.expires_at), on_inactivity: l.on_inactivity })
            .collect(),
        holds: r
            .holds
            .into_iter()
            .map(|h| HoldView { hold_id: h.hold_id, points: h.points, reward_ref: h.reward_ref, expires_at: text(h.expires_at) })
            .collect(),
        pending: r
            .pending
            .into_iter()
            .map(|p| PendingView {
                version: p.version,
                points: p.points,
                source_ref: p.source_ref,
                available_at: text(p.available_at),
                expires_at: text(p.expires_at),
            })
            .collect(),
        debt: r.debt,
        orders_placed: r.orders_placed,
        inactivity_expires_at: text(r.inactivity_expires_at),
    }
}

fn render_as_of(v: &AsOfView) -> String {
    let mut out = format!("as of {}", v.evaluated_at.as_deref().unwrap_or("the beginning"));
    match &v.stopped_at {
        Some(s) => {
            let _ = write!(
                out,
                ": {} events, the last v{} at position {}, {} ({})",
                s.stream_version,
                s.stream_version,
                s.global_position,
                s.recorded_at.as_deref().unwrap_or("-"),
                s.event_type
            );
        }
        None => out.push_str(": no event yet"),
    }
    let _ = write!(out, "; rules version {}", v.rules_version);
    if let Some(wallet) = &v.wallet
        && v.stopped_at.is_some()
    {
        let _ = write!(out, "\n{}", render_wallet(wallet));
    }
    for l in &v.lots {
        let expiry = match (&l.expires_at, l.on_inactivity) {
            (Some(at), _) => format!("expires {at}"),
            (None, true) => "expires on inactivity".to_owned(),
            (None, false) => "never expires".to_owned(),
        };
        let _ = write!(out, "\n  lot v{:<6} {:>8} points, {:>6} held, {expiry}", l.lot, l.points, l.held);
    }
    for h in &v.holds {
        let _ = write!(
            out,
            "\n  hold {:?}: {} points for {:?} until {}",
            h.hold_id,
            h.points,
            h.reward_ref,
            h.expires_at.as_deref().unwrap_or("-")
        );
    }
    for p in &v.pending {
        let _ = write!(
            out,
            "\n  pending v{}: {} points for {:?}, available {}",
            p.version,
            p.points,
            p.source_ref,
            p.available_at.as_deref().unwrap_or("-")
        );
    }
    if v.debt != 0 {
        let _ = write!(out, "\n  debt      {}", v.debt);
    }
    if let Some(at) = &v.inactivity_expires_at {
        let _ = write!(out, "\n  inactive  points expire {at} unless the customer acts");
    }
    out
}

/// The wallet's figures that differ between two views, in the order the view lists them.
fn differences(from: &AsOfView, to: &AsOfView) -> Vec<Difference> {
    let figures = |v: &AsOfView| match serde_json::to_value(&v.wallet) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (before, after) = (figures(from), figures(to));
    let mut fields: Vec<&String> = after.keys().collect();
    fields.extend(before.keys().filter(|k| !after.contains_key(*k)));
    fields
        .into_iter()
        .filter_map(|field| {
            let (b, a) = (before.get(field).cloned().unwrap_or_default(), after.get(field).cloned().unwrap_or_default());
            (b != a).then(|| Difference { field: field.clone(), before: b, after: a })
        })
        .chain(
            [
                ("debt", from.debt.into(), to.debt.into()),
                ("orders_placed", from.orders_placed.into(), to.orders_placed.into()),
                ("rules_version", from.rules_version.into(), to.rules_version.into()),
                ("lots", from.lots.len().into(), to.lots.len().into()),
                ("holds", from.holds.len().into(), to.holds.len().into()),
                ("pending", from.pending.len().into(), to.pending.len().into()),
            ]
            .into_iter()
            .filter(|(_, b, a): &(&str, serde_json::Value, serde_json::Value)| b != a)
            .map(|(field, before, after)| Difference { field: field.to_owned(), before, after }),
        )
        .collect()
}

fn render_diff(d: &DiffView) -> String {
    let mut out = render_as_of(&d.from);
    let _ = write!(out, "\n\n{} events after it:", d.changes.len());
    for t in &d.changes {
        let _ = write!(out, "\n{}", render_transaction(t));
    }
    let _ = write!(out, "\n\n{}", render_as_of(&d.to));
    out.push_str("\n\nchanged:");
    if d.differences.is_empty() {
        out.push_str(" nothing");
    }
    for difference in &d.differences {
        let _ = write!(out, "\n  {:<20} {} -> {}", difference.field, difference.before, difference.after);
    }
    out
}

pub(crate) async fn connect(target: &Target) -> Result<AuditServiceClient<Authed>, ClientError> {
    credentials::connect(&target.server, target.key.bearer_for(&target.server)?)
        .await
        .map(|channel| AuditServiceClient::new(channel).max_decoding_message_size(REPLY_BYTES_MAX))
        .map_err(|source| ClientError::Connect { server: target.server.clone(), source })
}

async fn wallet_as_of(
    client: &mut AuditServiceClient<Authed>,
    wallet: &WalletRef,
    when: &AsOfArgs,
) -> Result<WalletAsOfResponse, ClientError> {
    let as_of = match (when.as_of, when.position) {
        (Some(at), _) => wallet_as_of_request::AsOf::At(crate::status::timestamp(at)),
        (None, position) => wallet_as_of_request::AsOf::Position(position.unwrap_or(u64::MAX)),
    };
    let request = WalletAsOfRequest { tenant_id: wallet.tenant.clone(), wallet_id: wallet.wallet.clone(), as_of: Some(as_of) };
    Ok(client.wallet_as_of(request).await.map_err(ClientError::Call)?.into_inner())
}

/// Every transaction after version `after` up to `up_to`, oldest first, page by page.
async fn changes(
    client: &mut AuditServiceClient<Authed>,
    wallet: &WalletRef,
    after: u64,
    up_to: u64,
) -> Result<Vec<TransactionView>, ClientError> {
    let (mut changes, mut after_version) = (Vec::new(), after);
    while after_version < up_to {
        let request = WalletChangesRequest {
            tenant_id: wallet.tenant.clone(),
            wallet_id: wallet.wallet.clone(),
            after_version,
            up_to_version: up_to,
            page_size: 0,
        };
        let page = client.wallet_changes(request).await.map_err(ClientError::Call)?.into_inner();
        changes.extend(page.transactions.into_iter().map(transaction_view));
        if page.next_after_version <= after_version {
            break;
        }
        after_version = page.next_after_version;
    }
    Ok(changes)
}

fn version(r: &WalletAsOfResponse) -> u64 {
    r.stopped_at.as_ref().map_or(0, |s| s.stream_version)
}

async fn replay(wallet: WalletRef, when: AsOfArgs, diff: Option<i64>, target: &Target) -> Result<String, ClientError> {
    let mut client = connect(target).await?;
    let first = wallet_as_of(&mut client, &wallet, &when).await?;
    let Some(second_at) = diff else {
        return Ok(output(target.json, &as_of_view(first), render_as_of));
    };
    let second = wallet_as_of(&mut client, &wallet, &AsOfArgs { as_of: Some(second_at), position: None }).await?;
    // Earlier first: by the last event applied, then by the instant (no event between the two).
    let instant = |r: &WalletAsOfResponse| r.evaluated_at.map_or(0, |t| t.seconds);
    let (from, to) =
        if (version(&second), instant(&second)) < (version(&first), instant(&first)) { (second, first) } else { (first, second) };
    let changes = changes(&mut client, &wallet, version(&from), version(&to)).await?;
    let (from, to) = (as_of_view(from), as_of_view(to));
    let differences = differences(&from, &to);
    Ok(output(target.json, &DiffView { from, to, changes, differences }, render_diff))
}

async fn program(tenant: String, when: AsOfArgs, target: &Target) -> Result<String, ClientError> {
    let as_of = match (when.as_of, when.position) {
        (Some(at), _) => program_as_of_request::AsOf::At(crate::status::timestamp(at)),
        (None, position) => program_as_of_request::AsOf::Position(position.unwrap_or(u64::MAX)),
    };
    let reply: ProgramAsOfResponse = connect(target)
        .await?
        .program_as_of(ProgramAsOfRequest { tenant_id: tenant, as_of: Some(as_of) })
        .await
        .map_err(ClientError::Call)?
        .into_inner();
    if target.json {
        return Ok(serde_json::to_string_pretty(&program_json(&reply)).expect("views serialize"));
    }
    let mut out = format!("as of {}", reply.evaluated_at.map_or_else(|| "the beginning".to_owned(), |t| t.to_string()));
    match (&reply.stopped_at, &reply.program) {
        (Some(s), Some(p)) => {
            let _ = write!(out, ": {} events, the last at position {} ({})", s.stream_version, s.global_position, s.event_type);
            let _ = write!(
                out,
                "\n{:?} (UTC{:+} min), {}, pending {} days, refund window {} days, {} tiers ({}, grace {} days), {} stamp cards, {} credit packages\nexpiry: {}",
                p.name,
                p.utc_offset_minutes,
                p.return_policy().as_str_name(),
                p.pending_days,
                p.refund_window_days,
                p.tiers.len(),
                p.tier_window().as_str_name(),
                p.tier_grace_days,
                p.stamp_cards.len(),
                p.credit_packages.len(),
                p.expiry_policy.as_ref().map_or_else(|| "never".to_owned(), |e| format!("{e:?}"))
            );
        }
        _ => out.push_str(": not created yet"),
    }
    match &reply.rules_in_force {
        Some(rules) => {
            let from = rules.effective_from.map_or_else(|| "-".to_owned(), |t| t.to_string());
            let _ = write!(
                out,
                "\nrules version {} in force since {from}, published by {:?}:\n{}",
                rules.version, rules.published_by, rules.rules_json
            );
        }
        None => out.push_str("\nno rules in force"),
    }
    Ok(out)
}

/// The program answer as JSON: the protobuf fields, names as in the `.proto`.
fn program_json(reply: &ProgramAsOfResponse) -> serde_json::Value {
    let text = |t: &Option<prost_types::Timestamp>| t.map(|t| t.to_string());
    serde_json::json!({
        "evaluated_at": text(&reply.evaluated_at),
        "stopped_at": reply.stopped_at.clone().map(stopped_at_view),
        "program": reply.program.as_ref().map(|p| serde_json::json!({
            "name": p.name,
            "utc_offset_minutes": p.utc_offset_minutes,
            "return_policy": p.return_policy().as_str_name(),
            "expiry_policy": p.expiry_policy.as_ref().map(|e| format!("{e:?}")),
            "tier_window": p.tier_window().as_str_name(),
            "tier_grace_days": p.tier_grace_days,
            "rules_version": p.rules_version,
            "pending_days": p.pending_days,
            "refund_window_days": p.refund_window_days,
            "tiers": p.tiers.iter().map(|t| t.tier_id.clone()).collect::<Vec<_>>(),
            "stamp_cards": p.stamp_cards.iter().map(|c| c.card_id.clone()).collect::<Vec<_>>(),
            "credit_packages": p.credit_packages.iter().map(|c| c.package_id.clone()).collect::<Vec<_>>(),
        })),
        "rules_in_force": reply.rules_in_force.as_ref().map(|r| serde_json::json!({
            "version": r.version,
            "effective_from": text(&r.effective_from),
            "published_by": r.published_by,
            "rules_json": r.rules_json,
        })),
    })
}

/// Runs one `tally audit` subcommand that asks a server; returns what to print.
pub async fn run(command: AuditCommand) -> Result<String, ClientError> {
    match command {
        AuditCommand::Replay { wallet, when, diff, target } => replay(wallet, when, diff, &target).await,
        AuditCommand::Program { tenant, when, target } => program(tenant, when, &target).await,
        AuditCommand::Export { tenant, from, to, up_to_position, format, out, target } => {
            let end = match (to, up_to_position) {
                (_, Some(position)) => tally_proto::v1::export_ledger_request::End::UpToPosition(position),
                (Some(to), None) => tally_proto::v1::export_ledger_request::End::To(crate::status::timestamp(to)),
                (None, None) => return Err(ClientError::Direct("--to or --up-to-position is required".into())),
            };
            crate::exportctl::export(tenant, from, end, format, out.as_deref(), &target).await
        }
        AuditCommand::Verify(_) | AuditCommand::Checkpoint(_) | AuditCommand::Keygen { .. } => Err(ClientError::Direct(
            "tally audit verify, checkpoint and keygen work on the log and key files directly, not through a server".into(),
        )),
    }
}

/// What `tally audit verify` found: whether the log could be checked, and whether it is intact.
#[derive(Debug)]
pub struct VerifyReport {
    pub checked: bool,
    pub intact: bool,
    pub text: String,
}

#[derive(Debug, Serialize)]
struct VerifyView {
    intact: bool,
    stream: Option<String>,
    events: u64,
    linked: u64,
    head_position: Option<u64>,
    /// The log chain's link at the head (whole log), or the stream chain's last link (one stream), hex.
    head_hash: Option<String>,
    broken: Option<BrokenView>,
    /// Why the check could not be made (the log could not be read).
    error: Option<String>,
    /// What the checkpoint said, if one was given.
    checkpoint: Option<CheckpointView>,
}

#[derive(Debug, Serialize)]
struct CheckpointView {
    position: u64,
    signed_at: String,
    log_hash: String,
    /// Whether the log up to the checkpoint's position is the one signed.
    matches: bool,
}

#[derive(Debug, Serialize)]
struct BrokenView {
    position: u64,
    stream: String,
    stream_version: u64,
    reason: String,
}

/// The checkpoint given to `verify`, its signature checked with the key the auditor holds, and the log
/// it names checked to be this one.
async fn trusted_checkpoint(store: &dyn EventStore, args: &VerifyArgs) -> Result<Option<(Checkpoint, Hash)>, String> {
    let (Some(path), Some(key)) = (&args.checkpoint, &args.public_key) else { return Ok(None) };
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let checkpoint: Checkpoint = serde_json::from_str(&text).map_err(|e| format!("{} is not a checkpoint: {e}", path.display()))?;
    let key = std::fs::read_to_string(key).unwrap_or_else(|_| key.clone());
    let trusted = checkpoint::verifying_key(&key).map_err(|e| e.to_string())?;
    let signed = checkpoint.verify(&trusted).map_err(|e| e.to_string())?;
    let log_id = existing_log_identity(store).await.map_err(|e| e.to_string())?.unwrap_or_default();
    if log_id != checkpoint.log_id {
        return Err(format!("the checkpoint is of log {:?}, this log is {log_id:?}", checkpoint.log_id));
    }
    Ok(Some((checkpoint, signed)))
}

/// Checks `store` against its hash chains: the whole log, or one stream; and against a checkpoint.
pub async fn verify(store: &dyn EventStore, args: &VerifyArgs) -> VerifyReport {
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos} events checked  {per_sec}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let trusted = match trusted_checkpoint(store, args).await {
        Ok(trusted) => trusted,
        Err(error) => {
            let view = VerifyView { error: Some(error), ..VerifyView::empty(args) };
            return VerifyReport { checked: false, intact: false, text: verify_text(args.json, &view) };
        }
    };
    let outcome = match &args.stream {
        None => verify::verify_log_at(store, trusted.as_ref().map(|(c, _)| c.position), |position| bar.set_position(position)).await,
        Some(name) => match StreamId::new(name) {
            Ok(stream) => verify::verify_stream(store, &stream).await,
            Err(error) => Err(error),
        },
    };
    bar.finish_and_clear();
    let mut view = VerifyView::empty(args);
    let verified = match outcome {
        Err(error) => {
            view.error = Some(error.to_string());
            None
        }
        Ok(Ok(verified)) if verified.events == 0 => {
            view.error = Some(if args.stream.is_some() { "the stream has no events" } else { "the log has no events" }.into());
            None
        }
        Ok(Ok(verified)) => {
            view.intact = true;
            Some(verified)
        }
        Ok(Err((broken, verified))) => {
            view.broken = Some(BrokenView {
                position: broken.position,
                stream: broken.stream,
                stream_version: broken.stream_version,
                reason: broken.reason,
            });
            Some(verified)
        }
    };
    if let Some(v) = verified {
        (view.events, view.linked) = (v.events, v.linked);
        view.head_position = v.head.map(|(position, _)| position);
        view.head_hash = v.head.map(|(_, hash)| hex(&hash)).or_else(|| v.stream_head.map(|hash| hex(&hash)));
        if let Some((checkpoint, signed)) = trusted
            && view.broken.is_none()
            && view.error.is_none()
        {
            let matches = v.link_at == Some(signed);
            view.intact &= matches;
            view.checkpoint = Some(CheckpointView {
                position: checkpoint.position,
                signed_at: checkpoint.signed_at,
                log_hash: checkpoint.log_hash,
                matches,
            });
        }
    }
    VerifyReport { checked: view.error.is_none(), intact: view.intact, text: verify_text(args.json, &view) }
}

fn verify_text(json: bool, view: &VerifyView) -> String {
    if json { serde_json::to_string_pretty(view).expect("views serialize") } else { render_verify(view) }
}

impl VerifyView {
    fn empty(args: &VerifyArgs) -> Self {
        Self {
            intact: false,
            stream: args.stream.clone(),
            events: 0,
            linked: 0,
            head_position: None,
            head_hash: None,
            broken: None,
            error: None,
            checkpoint: None,
        }
    }
}

/// Signs the head of `store`'s log chain with the key in `args.key`, once the log checks out.
pub async fn checkpoint(store: &dyn EventStore, args: &CheckpointArgs) -> Result<String, ClientError> {
    let seed = std::fs::read_to_string(&args.key).map_err(|e| ClientError::Direct(format!("cannot read {}: {e}", args.key.display())))?;
    let key = checkpoint::signing_key(&seed).map_err(|e| ClientError::Direct(e.to_string()))?;
    let verdict = verify::verify_log(store, |_| {}).await.map_err(|e| ClientError::Direct(format!("the log cannot be read: {e}")))?;
    let verified = verdict.map_err(|(broken, _)| ClientError::Direct(format!("not signing a log that does not check out: {broken}")))?;
    let Some((position, head)) = verified.head else {
        return Err(ClientError::Direct("the log is empty: nothing to sign".into()));
    };
    let log_id = existing_log_identity(store).await.map_err(|e| ClientError::Direct(e.to_string()))?.unwrap_or_default();
    let signed_at = OffsetDateTime::now_utc().format(&Rfc3339).map_err(|e| ClientError::Direct(e.to_string()))?;
    let signed = Checkpoint::sign(&key, &log_id, position, &head, &signed_at);
    let json = serde_json::to_string_pretty(&signed).expect("checkpoints serialize");
    match &args.out {
        Some(path) => {
            std::fs::write(path, format!("{json}\n")).map_err(|e| ClientError::Direct(format!("cannot write {}: {e}", path.display())))?;
            Ok(format!("signed the log up to position {position} (log hash {}) into {}", signed.log_hash, path.display()))
        }
        None => Ok(json),
    }
}

/// Makes a checkpoint signing key: its seed into `out` (created, never overwritten, mode 0600); answers
/// the public key.
pub fn keygen(out: &std::path::Path) -> Result<String, ClientError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let seed: [u8; 32] = rand::random();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| ClientError::Direct(format!("cannot create {}: {e}", out.display())))?;
    writeln!(file, "{}", hex(&seed))
        .and_then(|()| file.sync_all())
        .map_err(|e| ClientError::Direct(format!("cannot write {}: {e}", out.display())))?;
    Ok(format!(
        "public key: {}\n(the signing key is in {}: keep it off the log's hosts; give auditors the public key)",
        hex(key.verifying_key().as_bytes()),
        out.display()
    ))
}

fn render_verify(v: &VerifyView) -> String {
    let what = v.stream.as_deref().map_or_else(|| "the log".to_owned(), |s| format!("stream {s}"));
    let mut checked = format!("{} events checked, {} with stored links", v.events, v.linked);
    if v.linked < v.events && v.broken.is_none() {
        checked.push_str(" (the others were written before the chains: their links were computed)");
    }
    if let Some(error) = &v.error {
        return format!("{what} could not be checked: {error}");
    }
    match &v.broken {
        None => {
            let head = match (v.head_position, &v.head_hash) {
                (Some(position), Some(hash)) => format!("; log hash at position {position}: {hash}"),
                (None, Some(hash)) => format!("; the stream's last link: {hash}"),
                _ => String::new(),
            };
            match &v.checkpoint {
                None => format!("{what} is intact: {checked}{head}"),
                Some(c) if c.matches => {
                    format!(
                        "{what} is intact and matches the checkpoint signed {} at position {}: {checked}{head}",
                        c.signed_at, c.position
                    )
                }
                Some(c) if v.events < c.position => format!(
                    "{what} is BROKEN: it ends at position {}, before the checkpoint signed {} at position {}: events were removed",
                    v.events, c.signed_at, c.position
                ),
                Some(c) => format!(
                    "{what} is BROKEN: up to position {} it is not the log signed {} (log hash {}): it was rewritten and its links recomputed\n({checked})",
                    c.position, c.signed_at, c.log_hash
                ),
            }
        }
        Some(b) if b.stream.is_empty() => format!(
            "{what} is BROKEN at position {}: {}
({checked} before it)",
            b.position, b.reason
        ),
        Some(b) => format!(
            "{what} is BROKEN at position {} ({} version {}): {}
({checked} before it)",
            b.position, b.stream, b.stream_version, b.reason
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_instant;

    #[test]
    fn instants_are_read_in_the_forms_an_auditor_types() {
        let march = 1_772_323_200_000; // 2026-03-01T00:00:00Z
        assert_eq!(parse_instant("2026-03-01"), Ok(march));
        assert_eq!(parse_instant("2026-03-01T00:00Z"), Ok(march));
        assert_eq!(parse_instant("2026-03-01T00:00:00Z"), Ok(march));
        assert_eq!(parse_instant("2026-03-01T01:00+01:00"), Ok(march));
        assert_eq!(parse_instant("2026-03-01T00:00:00.250Z"), Ok(march + 250));
        for bad in ["", "2026-13-01", "yesterday", "2026-03-01T00Z", "1772323200000"] {
            assert!(parse_instant(bad).is_err(), "{bad:?} is refused");
        }
    }
}
