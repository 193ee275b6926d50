//! An image made on a base image (as the builder makes them): the process target unpacks and
//! runs only its service layer, and the base's `PATH` does not replace the host's.

use slipway_deployer::target::Target;
use slipway_deployer::target::process::{ProcessTarget, Users};
use tokio::sync::mpsc::unbounded_channel;

use crate::support::*;

#[tokio::test]
async fn only_the_service_layer_of_an_image_on_a_base_is_unpacked_and_run() {
    let image = push_based_image().await;
    let (settings, cleanup) = workdir();
    let host_path = settings.path.clone();
    let (tx, _rx) = unbounded_channel();
    let target = ProcessTarget::new(settings, tx, Users::Shared).unwrap();

    let spec = spec(&image, None);
    let id = spec.instance_id;
    let placement = target.start(spec).await.unwrap();
    // The base layer's app.py would exit at once: serving means the service layer's runs.
    let env = env_of(&placement.address).await;
    assert_eq!(
        env["FROM_IMAGE"], "yes",
        "the image's Env reaches the instance"
    );
    assert_eq!(
        env["PATH"], host_path,
        "the base's PATH names directories the host does not have"
    );

    let hex = image.rsplit_once("sha256:").unwrap().1;
    let root = cleanup.scope.join("releases/pytest").join(hex);
    assert!(root.join("app/app.py").is_file(), "{}", root.display());
    for base_only in ["base-only.txt", "usr"] {
        assert!(
            !root.join(base_only).exists(),
            "{base_only} of the base layer was unpacked"
        );
    }
    target
        .stop(id, std::time::Duration::from_secs(2))
        .await
        .unwrap();
}
