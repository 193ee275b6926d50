//! Which check failed a deployment: the `check` of its reason and the label of
//! `deployment_step_failures_total`, a closed set.

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    /// An instance of the release went unhealthy (or down) while a gate watched it.
    Health,
    /// An instance kept crashing.
    CrashLoop,
    /// A step, or resolving the request, did not finish in time.
    Deadline,
    /// A step kept failing (the registry or the target unreachable) until its deadline.
    Error,
    /// The registry does not know the release.
    Release,
    /// The artifact could not be fetched.
    Artifact,
    /// The target could not start an instance.
    Start,
    /// The request cannot be honoured.
    Request,
    /// Cancelled on request (not a failure: not counted as one).
    Cancelled,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Health => "health",
            Self::CrashLoop => "crash_loop",
            Self::Deadline => "deadline",
            Self::Error => "error",
            Self::Release => "release",
            Self::Artifact => "artifact",
            Self::Start => "start",
            Self::Request => "request",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether a stored reason's `check` is this one.
    pub fn is(self, check: &str) -> bool {
        check == self.as_str()
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
