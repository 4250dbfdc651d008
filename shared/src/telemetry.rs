//! Tracing setup: human-readable or JSON logs (level from `RUST_LOG`, default `info`), and, when
//! an OTLP endpoint is configured, OpenTelemetry export of the spans of traced messages, with
//! W3C `traceparent` propagation between backend → fanout → gateway.

use std::sync::OnceLock;

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator as _},
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider},
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{LogFormat, TelemetryArgs};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber (and the OTLP exporter if configured). Call once, first thing
/// in `main`; call [`shutdown`] before exiting so buffered spans are sent.
pub fn init(args: &TelemetryArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info"))?;
    let otel = match &args.otlp_endpoint {
        Some(endpoint) => {
            let provider = provider(args, endpoint)?;
            let tracer = provider.tracer("roomcast");
            let _ = PROVIDER.set(provider);
            Some(tracing_opentelemetry::layer().with_tracer(tracer))
        }
        None => None,
    };
    let logs = match args.log_format {
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(otel)
        .try_init()?;
    Ok(())
}

fn provider(args: &TelemetryArgs, endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let protocol = if args.otlp_protocol == "http/json" {
        Protocol::HttpJson
    } else {
        Protocol::HttpBinary
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()?;
    let service = args.service_name.clone().unwrap_or_else(|| {
        std::env::args()
            .next()
            .and_then(|a| {
                std::path::Path::new(&a)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "roomcast".into())
    });
    let mut builder = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build());
    // Recording every message would cost more than the messages: only traces a publisher asked
    // for (a sampled traceparent) are kept, unless the standard variable chooses otherwise.
    if std::env::var_os("OTEL_TRACES_SAMPLER").is_none() {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)));
    }
    Ok(builder.build())
}

/// Sends the spans still buffered. Call before the process exits.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(error) = provider.shutdown()
    {
        tracing::warn!(%error, "could not flush traces");
    }
}

/// Whether spans are exported (an OTLP endpoint is configured).
pub fn exporting() -> bool {
    PROVIDER.get().is_some()
}

struct One<'a>(&'a str);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

struct Out(Option<String>);

impl Injector for Out {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

/// Makes `span` continue the trace of a W3C `traceparent` (from a publisher, or the previous
/// service). Call it before the span is first entered. Does nothing when spans are not exported
/// or the value is not a valid context.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    let cx = TraceContextPropagator::new().extract(&One(traceparent));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The W3C `traceparent` of `span`, for the next hop; `None` when it has no exported context.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut out = Out(None);
    TraceContextPropagator::new().inject_context(&cx, &mut out);
    out.0
}
