//! Writes the `InferencePool` CustomResourceDefinition as YAML to stdout (`make crds` puts it in
//! `crds/`; a test fails when the checked-in file differs).

use gpupool_api::InferencePool;
use kube::CustomResourceExt;

fn main() {
    match serde_yaml::to_string(&InferencePool::crd()) {
        Ok(yaml) => print!("{yaml}"),
        Err(e) => {
            eprintln!("crdgen: cannot serialise the CRD: {e}");
            std::process::exit(1);
        }
    }
}
