//! `gpupool-operator`: wiring only. Tracing, then the command line (a bad one exits with a usage
//! error before any port is bound), then the HTTP server and, once this process leads, the
//! controller, side by side. SIGTERM or Ctrl-C shuts down gracefully: readiness goes false, the
//! controller finishes the reconciles in flight, the Lease is released.

use clap::{CommandFactory, Parser};
use gpupool_operator::config::{Args, LogFormat};
use gpupool_operator::controller::{self, Context};
use gpupool_operator::http::{self, Health};
use gpupool_operator::leader::{LeaderElector, LeadershipEnd, LeaseConfig};
use gpupool_operator::metrics::Metrics;
use gpupool_operator::resources::PodDefaults;
use gpupool_operator::telemetry::Collector;
use kube::runtime::events::{Recorder, Reporter};
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.log_format);
    if let Err(message) = args.validate() {
        Args::command()
            .error(clap::error::ErrorKind::ValueValidation, message)
            .exit();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(args));
    // Don't wait for stray blocking tasks (DNS lookups, a reconcile's last request).
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    code
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(args: Args) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(args.http_addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %args.http_addr, error = %e, "cannot bind the HTTP address");
            return ExitCode::FAILURE;
        }
    };
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %gpupool_operator::error::chain(&e), "no Kubernetes client");
            return ExitCode::FAILURE;
        }
    };
    let collector = match Collector::new(args.telemetry_timeout) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %gpupool_operator::error::chain(&e), "no telemetry client");
            return ExitCode::FAILURE;
        }
    };
    let identity = args.identity();
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());

    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(%addr, %identity, namespace = ?args.namespace, "gpupool-operator starting");
    let server = axum::serve(listener, http::router(metrics.clone(), health.clone()))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let server = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the HTTP server failed");
        }
    });

    let reporter = Reporter {
        controller: "gpupool-operator".into(),
        instance: Some(identity.clone()),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        metrics: metrics.clone(),
        defaults: PodDefaults {
            sidecar_image: args.sidecar_image.clone(),
        },
        collector,
        telemetry_interval: args.telemetry_interval,
        sidecar_port: args.sidecar_port,
        compat: Default::default(),
        memory: Default::default(),
    });
    let controller = controller::run(ctx, args.namespace.clone(), shutdown.clone());

    let code = if args.leader_elect {
        let mut elector = LeaderElector::new(
            client,
            LeaseConfig {
                name: args.lease_name.clone(),
                namespace: args.lease_namespace.clone(),
                identity,
                lease_duration: args.lease_duration,
                renew_deadline: args.renew_deadline,
                retry_period: args.retry_period,
            },
        );
        health.set_ready(true); // a standby is ready: it is there to take over
        if !elector.acquire(&shutdown).await {
            ExitCode::SUCCESS
        } else {
            metrics.leader.set(1);
            tokio::pin!(controller);
            let end = tokio::select! {
                () = &mut controller => None,
                end = elector.hold(&shutdown) => Some(end),
            };
            match end {
                Some(LeadershipEnd::Lost(why)) => {
                    // Stop reconciling at once; the Deployment restarts this process as a standby.
                    tracing::error!(%why, "leadership lost; exiting");
                    std::process::exit(1);
                }
                Some(LeadershipEnd::Cancelled) => {
                    health.set_ready(false);
                    controller.await;
                    elector.release().await;
                }
                None => elector.release().await,
            }
            ExitCode::SUCCESS
        }
    } else {
        // Without leader election this process is the one that reconciles: it leads.
        metrics.leader.set(1);
        health.set_ready(true);
        controller.await;
        ExitCode::SUCCESS
    };
    health.set_ready(false);
    shutdown.cancel();
    let _ = server.await;
    tracing::info!("gpupool-operator stopped");
    code
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}
