//! Two operator processes against one API server: exactly one holds the Lease and reconciles;
//! when it dies without releasing, the other takes over within the lease duration (+5 s).

mod common;

use anyhow::{bail, Result};
use common::{apply, deployment, eventually, pool_yaml, Operator};
use gpupool_tests::ControlPlane;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use std::time::{Duration, Instant};

const LEASE_DURATION: Duration = Duration::from_secs(5);

async fn holder(client: &Client, ns: &str) -> Result<Option<String>> {
    let lease = Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt("gpupool-operator")
        .await?;
    Ok(lease
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

async fn get(url: &str) -> Result<(u16, String)> {
    let response = reqwest::get(url).await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_reconciles_and_the_standby_takes_over() -> Result<()> {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("op-leader")?;
    let client = cp.client().await?;
    let mut a = Operator::start(cp, &ns, "op-a", &[])?;
    let mut b = Operator::start(cp, &ns, "op-b", &[])?;
    let first = eventually(Duration::from_secs(30), "a Lease holder", || {
        let client = client.clone();
        let ns = ns.clone();
        async move { holder(&client, &ns).await }
    })
    .await?;
    apply(cp, &ns, &pool_yaml("seg", &format!("{ns}-none"), 1, ""))?;
    deployment(&client, &ns, "seg").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (leader, standby) = if first == "op-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert!(
        leader.reconciles() > 0,
        "the leader reconciles:\n{}",
        leader.log()
    );
    assert_eq!(
        standby.reconciles(),
        0,
        "the standby must not:\n{}",
        standby.log()
    );
    assert_eq!(
        holder(&client, &ns).await?.as_deref(),
        Some(leader.identity.as_str())
    );

    // Both are ready (a standby is there to take over); only the leader says it leads.
    for (op, leads) in [(&*leader, "1"), (&*standby, "0")] {
        let addr = op.http_addr().expect("the HTTP address is logged");
        assert_eq!(get(&format!("http://{addr}/readyz")).await?.0, 200);
        assert_eq!(get(&format!("http://{addr}/healthz")).await?.0, 200);
        let (code, metrics) = get(&format!("http://{addr}/metrics")).await?;
        assert_eq!(code, 200);
        assert!(
            metrics.contains(&format!("gpupool_operator_leader {leads}")),
            "{metrics}"
        );
    }

    // The leader dies without releasing the Lease: the standby waits it out, then leads.
    leader.kill();
    let killed = Instant::now();
    let new_holder = eventually(
        LEASE_DURATION + Duration::from_secs(5),
        "the standby to take the Lease",
        || {
            let client = client.clone();
            let ns = ns.clone();
            let standby_id = standby.identity.clone();
            async move { Ok(holder(&client, &ns).await?.filter(|h| *h == standby_id)) }
        },
    )
    .await?;
    let took = killed.elapsed();
    eprintln!("the standby took over {took:?} after the leader was killed");
    assert_eq!(new_holder, standby.identity);
    assert!(
        took <= LEASE_DURATION + Duration::from_secs(5),
        "took {took:?}"
    );

    // The new leader reconciles: it follows a scale.
    cp.kubectl()
        .run_ok(&["-n", &ns, "scale", "gpool", "seg", "--replicas=2"])?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    eventually(
        Duration::from_secs(30),
        "the new leader to scale the Deployment",
        || {
            let api = deployments.clone();
            async move {
                Ok((api.get("seg").await?.spec.and_then(|s| s.replicas) == Some(2)).then_some(()))
            }
        },
    )
    .await?;
    // Its "reconciled" line follows the Deployment's update: wait for it rather than race it.
    let logged = eventually(
        Duration::from_secs(10),
        "the new leader to log a reconcile",
        || {
            let n = standby.reconciles();
            async move { Ok((n > 0).then_some(n)) }
        },
    )
    .await;
    if logged.is_err() {
        bail!("the new leader did not log reconciles:\n{}", standby.log());
    }
    // A graceful stop releases the Lease at once.
    let status = standby.terminate()?;
    assert!(status.success(), "graceful exit: {status:?}");
    assert_eq!(holder(&client, &ns).await?, None, "the Lease is released");
    Ok(())
}
