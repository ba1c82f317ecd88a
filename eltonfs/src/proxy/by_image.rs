//! The proxy's runtime: an app with an image runs in Docker, any other
//! as a process; both on the same read-only mounts.

use std::sync::Arc;

use elton_control::apps::AppSpec;

use super::docker::DockerRuntime;
use super::instance::{ProcessRuntime, Runtime, StartFuture};

pub struct ByImage {
    pub process: Arc<ProcessRuntime>,
    pub docker: Arc<DockerRuntime>,
}

impl Runtime for ByImage {
    fn start<'a>(&'a self, app: &'a AppSpec) -> StartFuture<'a> {
        if app.image.is_some() {
            self.docker.start(app)
        } else {
            self.process.start(app)
        }
    }

    /// Containers first: they hold bind mounts of the mounts the process
    /// runtime then detaches.
    fn shutdown(&self) {
        self.docker.shutdown();
        self.process.shutdown();
    }
}
