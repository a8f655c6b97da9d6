//! Customers' personal data in read models: wallet rows keep it sealed (`WalletSummary::customer_sealed`)
//! and it is opened here, with the wallets' keys, only when rows are read. Destroying a wallet's key
//! (`WalletService.EraseCustomer`) therefore erases the data from every read model at once, old versions
//! of their storage and their backups included (ADR 0012).

use tally_engine::personal;
use tally_engine::store::{EventStore, StreamId};

use crate::ProjectionError;
use crate::model::WalletSummary;

/// Fills in the customer reference of `rows` (`(tenant, wallet, summary)`) whose data is sealed, with one
/// read of the store's keys for them all. A row whose key is gone shows none and reads as erased (as the
/// wallet's own answers do). Sealed data that does not open under its wallet's key is reported — logged
/// and counted (`tally_personal_data_unreadable_total`) — and shown as no reference, so one bad row
/// never takes a whole page (the bytes come from the log: a rebuild would not mend them).
pub async fn reveal(store: &dyn EventStore, rows: &mut [(&str, &str, &mut WalletSummary)]) -> Result<(), ProjectionError> {
    let sealed: Vec<usize> = (0..rows.len()).filter(|&i| !rows[i].2.customer_sealed.is_empty()).collect();
    if sealed.is_empty() {
        return Ok(());
    }
    let streams: Vec<StreamId> =
        sealed.iter().map(|&i| StreamId::new(&format!("{}/wallet/{}", rows[i].0, rows[i].1))).collect::<Result<_, _>>()?;
    let keys = store.personal_keys(&streams).await?;
    for ((&i, stream), key) in sealed.iter().zip(&streams).zip(keys) {
        let summary = &mut *rows[i].2;
        let Some(key) = key else {
            summary.customer_erased = true;
            continue;
        };
        let opened = prost::Message::decode(summary.customer_sealed.as_slice())
            .map_err(|e| e.to_string())
            .and_then(|sealed| personal::open(&key, stream.as_str(), &sealed).map_err(|e| e.to_string()));
        match opened {
            Ok(data) => summary.customer_ref = data.customer_ref,
            Err(reason) => {
                tracing::error!(%stream, %reason, "a wallet's sealed customer data does not open under its key");
                metrics::counter!("tally_personal_data_unreadable_total").increment(1);
            }
        }
    }
    Ok(())
}
