//! A guard request's policy, as the guard checks and applies it on every OS:
//! what makes a request invalid (no command, a relative path in `read` or
//! `write`), which variables of the request's env reach the command
//! (`envAllow`), how much output a stream may produce before the command is
//! killed, and `require`, which turns an isolation layer the host did not
//! apply into an `Unsupported` error instead of a weaker sandbox.

use crate::error::{KernelError, KernelResult};
use crate::proto::{ErrorCode, GuardIsolation, GuardPolicy, GuardRequest};

/// `run()` collects output in memory: at most this much per stream unless
/// `maxOutputBytes` says otherwise.
const COLLECT_LIMIT_BYTES: u64 = 64 << 20;

/// Refuses a request the guard cannot run as asked, naming the field.
pub fn validate(request: &GuardRequest, policy: &GuardPolicy) -> KernelResult<()> {
    for (field, paths) in [
        ("policy.read", &policy.read),
        ("policy.write", &policy.write),
    ] {
        if let Some(relative) = paths
            .iter()
            .find(|path| !std::path::Path::new(path).is_absolute())
        {
            return Err(KernelError::invalid_argument(format!(
                "{field} must hold absolute paths, got {relative:?}"
            ))
            .with_detail("field", field));
        }
    }
    if let Some(privileges) = &policy.privileges {
        if !["", "setuid", "userns", "keep"].contains(&privileges.drop.as_str()) {
            return Err(KernelError::invalid_argument(format!(
                "policy.privileges.drop must be \"setuid\", \"userns\" or \"keep\", got {:?}",
                privileges.drop
            ))
            .with_detail("field", "policy.privileges.drop"));
        }
    }
    if request.cmd.is_empty() {
        return Err(
            KernelError::invalid_argument("cmd must not be empty").with_detail("field", "cmd")
        );
    }
    Ok(())
}

/// Whether the request's env variable `key` reaches the command: all do
/// unless `envAllow` names some.
pub fn passes_env(policy: &GuardPolicy, key: &str) -> bool {
    policy.env_allow.is_empty() || policy.env_allow.iter().any(|allowed| allowed == key)
}

/// How a command started by a root host stops being root.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Drop {
    /// setgroups/setresgid/setresuid to these ids.
    Setuid { uid: u32, gid: u32 },
    /// The same, then a user namespace in which the uid is not mapped.
    UserNamespace { uid: u32, gid: u32 },
    /// Stay root (without capabilities).
    Keep,
}

/// The nobody user and group, the default ids a root host drops to.
pub const NOBODY: u32 = 65534;

/// What `policy.privileges` asks for (validated: an unknown mode is `Setuid`).
pub fn privileges(policy: &GuardPolicy) -> Drop {
    let privileges = policy.privileges.clone().unwrap_or_default();
    let id = |value: u32| if value == 0 { NOBODY } else { value };
    let (uid, gid) = (id(privileges.uid), id(privileges.gid));
    match privileges.drop.as_str() {
        "keep" => Drop::Keep,
        "userns" => Drop::UserNamespace { uid, gid },
        _ => Drop::Setuid { uid, gid },
    }
}

/// Bytes a stream may produce before the command is killed (0 = no limit).
/// Collected output lives in memory: bounded even without a policy.
pub fn output_limit(policy: &GuardPolicy, collect: bool) -> u64 {
    match (policy.max_output_bytes, collect) {
        (0, true) => COLLECT_LIMIT_BYTES,
        (limit, _) => limit,
    }
}

/// `policy.require`: the first required layer `isolation` does not list as
/// applied is an `Unsupported` error that says why (from its `notApplied`
/// line, or that the name is unknown).
pub fn check_required(policy: &GuardPolicy, isolation: &GuardIsolation) -> KernelResult<()> {
    for required in &policy.require {
        if !isolation.applied.iter().any(|applied| applied == required) {
            let why = isolation
                .not_applied
                .iter()
                .find(|line| line.starts_with(&format!("{required}:")))
                .cloned()
                .unwrap_or_else(|| format!("{required}: unknown isolation feature"));
            return Err(
                KernelError::new(ErrorCode::Unsupported, format!("policy.require: {why}"))
                    .with_detail("feature", required.clone()),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cmd: &str, read: &[&str]) -> (GuardRequest, GuardPolicy) {
        let policy = GuardPolicy {
            read: read.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        };
        let request = GuardRequest {
            cmd: cmd.into(),
            ..Default::default()
        };
        (request, policy)
    }

    #[test]
    fn validate_wants_a_command_and_absolute_paths() {
        let (ok, policy) = request("true", &["/srv"]);
        assert!(validate(&ok, &policy).is_ok());
        let (relative, policy) = request("true", &["/srv", "data"]);
        let error = validate(&relative, &policy).unwrap_err();
        assert!(error.message.contains("policy.read"), "{}", error.message);
        let (empty, policy) = request("", &[]);
        assert!(validate(&empty, &policy).is_err());
    }

    #[test]
    fn privileges_default_to_nobody_and_unknown_modes_are_refused() {
        let mut policy = GuardPolicy::default();
        let nobody = Drop::Setuid {
            uid: NOBODY,
            gid: NOBODY,
        };
        assert_eq!(privileges(&policy), nobody);
        policy.privileges = Some(crate::proto::GuardPrivileges {
            drop: "userns".into(),
            uid: 1234,
            gid: 0,
        });
        assert_eq!(
            privileges(&policy),
            Drop::UserNamespace {
                uid: 1234,
                gid: NOBODY
            }
        );
        let request = GuardRequest {
            cmd: "true".into(),
            ..Default::default()
        };
        assert!(validate(&request, &policy).is_ok());
        policy.privileges.as_mut().unwrap().drop = "root".into();
        let error = validate(&request, &policy).unwrap_err();
        assert!(
            error.message.contains("policy.privileges.drop"),
            "{}",
            error.message
        );
    }

    #[test]
    fn collected_output_is_bounded_even_without_a_limit() {
        let mut policy = GuardPolicy::default();
        assert_eq!(output_limit(&policy, false), 0);
        assert_eq!(output_limit(&policy, true), COLLECT_LIMIT_BYTES);
        policy.max_output_bytes = 10;
        assert_eq!(output_limit(&policy, true), 10);
        assert_eq!(output_limit(&policy, false), 10);
    }

    #[test]
    fn env_allow_filters_only_when_it_names_something() {
        let mut policy = GuardPolicy::default();
        assert!(passes_env(&policy, "HOME"));
        policy.env_allow = vec!["PATH".into()];
        assert!(passes_env(&policy, "PATH"));
        assert!(!passes_env(&policy, "HOME"));
    }

    #[test]
    fn require_names_the_first_missing_layer_and_why() {
        let isolation = GuardIsolation {
            applied: vec!["session".into()],
            not_applied: vec!["landlock: not supported by this kernel".into()],
            ..Default::default()
        };
        let mut policy = GuardPolicy {
            require: vec!["session".into()],
            ..Default::default()
        };
        assert!(check_required(&policy, &isolation).is_ok());
        policy.require.push("landlock".into());
        policy.require.push("teleport".into());
        let error = check_required(&policy, &isolation).unwrap_err();
        assert!(
            error.message.contains("not supported by this kernel"),
            "{}",
            error.message
        );
        policy.require = vec!["teleport".into()];
        let error = check_required(&policy, &isolation).unwrap_err();
        assert!(
            error.message.contains("unknown isolation feature"),
            "{}",
            error.message
        );
    }
}
