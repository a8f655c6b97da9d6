//! An OTLP/gRPC trace receiver that counts what it is sent and keeps nothing: the far end of a trace
//! export when `tally serve`'s cost of tracing is measured (`README.md`, "Measured on this machine").
//! `tally-otlp-sink ADDR` serves until killed and prints the spans received every second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

#[derive(Debug, Default, Clone)]
struct Count(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Count {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request.into_inner().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args().nth(1).ok_or("usage: tally-otlp-sink ADDR")?.parse()?;
    let count = Count::default();
    let reported = Arc::clone(&count.0);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            eprintln!("spans received: {}", reported.load(Ordering::Relaxed));
        }
    });
    tonic::transport::Server::builder().add_service(TraceServiceServer::new(count)).serve(address).await?;
    Ok(())
}
