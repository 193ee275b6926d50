//! Release images made without a Docker daemon (as ko and Jib do): the service's layer
//! ([`layer`]) appended to a base image pulled by digest ([`base`]), under an image config
//! written for the service ([`config`]). [`super::package`] pushes the result.
//!
//! Which base (first that applies): `[image] base` in slipway.toml; the builder's
//! `images.base.<kind>` for the detected project kind; `images.default_base`; none: an image
//! holding the service's files only (the process target runs it; container targets refuse it).

pub mod base;
pub mod config;
pub mod layer;

use std::collections::BTreeMap;

use serde::Deserialize;

pub use base::{BaseRef, BaseRefError};

/// Settings of section `[images]`: the platform's default bases.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSettings {
    /// The base of every image whose slipway.toml and language name none; empty: none.
    #[serde(default)]
    pub default_base: String,
    /// Per project kind (`cargo`, `go`, `node`, `python`, `maven`, ...): its base.
    #[serde(default)]
    pub base: BTreeMap<String, String>,
    /// Registries (`host:port`) bases are pulled from over plain HTTP; the push registry's
    /// `insecure` applies to it as well.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
}

/// Where a chosen base came from, for the build's log and its failure reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseOrigin {
    SlipwayToml,
    Language(String),
    Default,
}

impl std::fmt::Display for BaseOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SlipwayToml => f.write_str("[image] base in slipway.toml"),
            Self::Language(kind) => write!(f, "the builder's images.base.{kind}"),
            Self::Default => f.write_str("the builder's images.default_base"),
        }
    }
}

/// A base that was named somewhere but is not a valid reference.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {error}")]
pub struct BadBase {
    pub origin: BaseOrigin,
    /// Shown in the message, so not also a `source` (it would print twice).
    pub error: BaseRefError,
}

impl ImageSettings {
    /// Every base named in the settings parses: checked at start-up, so a typo stops the
    /// builder instead of failing each build.
    pub fn check(&self) -> Result<(), BadBase> {
        let named = self
            .base
            .iter()
            .map(|(kind, b)| (b, BaseOrigin::Language(kind.clone())))
            .chain(std::iter::once((&self.default_base, BaseOrigin::Default)));
        for (text, origin) in named.filter(|(b, _)| !b.is_empty()) {
            text.parse::<BaseRef>()
                .map_err(|error| BadBase { origin, error })?;
        }
        Ok(())
    }

    /// The base for a build: slipway.toml's, else the language's, else the default; `None`
    /// when nothing names one.
    pub fn choose(
        &self,
        from_toml: Option<&str>,
        kind: Option<&str>,
    ) -> Result<Option<(BaseRef, BaseOrigin)>, BadBase> {
        let named = from_toml
            .map(|b| (b.to_owned(), BaseOrigin::SlipwayToml))
            .or_else(|| {
                let kind = kind?;
                let base = self.base.get(kind).filter(|b| !b.is_empty())?;
                Some((base.clone(), BaseOrigin::Language(kind.to_owned())))
            })
            .or_else(|| {
                (!self.default_base.is_empty())
                    .then(|| (self.default_base.clone(), BaseOrigin::Default))
            });
        named
            .map(|(text, origin)| match text.parse::<BaseRef>() {
                Ok(base) => Ok((base, origin)),
                Err(error) => Err(BadBase { origin, error }),
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_is_chosen_in_order() {
        let settings = ImageSettings {
            default_base: "r:5000/default:1".into(),
            base: BTreeMap::from([("python".into(), "r:5000/python:3".into())]),
            insecure_registries: vec![],
        };
        let pick = |toml, kind| {
            settings
                .choose(toml, kind)
                .unwrap()
                .map(|(b, o)| (b.to_string(), o))
        };
        assert_eq!(
            pick(Some("r:5000/mine:2"), Some("python")),
            Some(("r:5000/mine:2".into(), BaseOrigin::SlipwayToml))
        );
        assert_eq!(
            pick(None, Some("python")),
            Some((
                "r:5000/python:3".into(),
                BaseOrigin::Language("python".into())
            ))
        );
        assert_eq!(
            pick(None, Some("go")),
            Some(("r:5000/default:1".into(), BaseOrigin::Default))
        );
        assert_eq!(
            ImageSettings::default().choose(None, Some("go")).unwrap(),
            None
        );
        settings.check().unwrap();
        let broken = ImageSettings {
            base: BTreeMap::from([("go".into(), "r:5000/Go".into())]),
            ..settings.clone()
        };
        let err = broken.check().unwrap_err().to_string();
        assert!(
            err.starts_with("the builder's images.base.go: `r:5000/Go`"),
            "{err}"
        );
        let err = settings.choose(Some("NOT A REF"), None).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "[image] base in slipway.toml: `NOT A REF` is not a valid base image reference"
            ),
            "{err}"
        );
    }
}
