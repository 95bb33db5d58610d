//! Which iptables the node uses: iptables-legacy (x_tables) or iptables-nft, detected the way
//! kube-proxy's image does it. kube-proxy itself just runs `iptables`; its image's
//! iptables-wrapper (kubernetes-sigs/iptables-wrappers, `DetectMode`) picks the variant once, at
//! the first call, from the chains kubelet (1.17+) creates in the mangle table —
//! `KUBE-IPTABLES-HINT` or `KUBE-KUBELET-CANARY` — looked for in this order:
//!
//! 1. `iptables-nft-save -t mangle`, then `ip6tables-nft-save -t mangle` → nft;
//! 2. `iptables-legacy-save`, then `ip6tables-legacy-save`, every table (`-t mangle` would make
//!    the legacy kernel module create a table that was not there) → legacy;
//! 3. neither → nft.
//!
//! Errors of the save commands are ignored, as the wrapper ignores them. One addition of ours:
//! when the chosen variant is not installed and the other one is, the other one is used (the
//! wrapper would fail at its first rule); the reason says so.
//!
//! [`detect_with`] is the pure decision over a function that runs a save; [`detect`] runs them.

use nftproxy_model::IpFamily;

/// Which iptables a rule set lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    Legacy,
    Nft,
}

impl Variant {
    pub const ALL: [Variant; 2] = [Variant::Legacy, Variant::Nft];
    pub fn word(self) -> &'static str {
        match self {
            Variant::Legacy => "legacy",
            Variant::Nft => "nft",
        }
    }
    pub fn other(self) -> Variant {
        match self {
            Variant::Legacy => Variant::Nft,
            Variant::Nft => Variant::Legacy,
        }
    }
    /// `iptables-nft`, `ip6tables-legacy`.
    pub fn name(self, family: IpFamily) -> String {
        let base = if family == IpFamily::V4 { "iptables" } else { "ip6tables" };
        format!("{base}-{}", self.word())
    }
    /// `iptables-nft-save`, `ip6tables-legacy-restore`, …
    pub fn tool(self, family: IpFamily, suffix: &str) -> String {
        format!("{}-{suffix}", self.name(family))
    }
    /// The variants installed on this machine (the only ones that can hold rules).
    pub fn installed_ones() -> impl Iterator<Item = Variant> {
        Variant::ALL.into_iter().filter(|v| v.installed())
    }
    /// Whether this variant's tools are installed (both families' save and restore).
    pub fn installed(self) -> bool {
        [IpFamily::V4, IpFamily::V6]
            .into_iter()
            .all(|f| on_path(&self.name(f)) && on_path(&self.tool(f, "save")) && on_path(&self.tool(f, "restore")))
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

impl std::str::FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Variant, String> {
        match s {
            "legacy" => Ok(Variant::Legacy),
            "nft" => Ok(Variant::Nft),
            other => Err(format!("unknown iptables variant {other:?} (legacy or nft)")),
        }
    }
}

/// The variant chosen and why (one line, for the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detection {
    pub variant: Variant,
    pub reason: String,
}

/// kubelet's hint chains, as the wrapper's `hasKubeletChains` matches them: a chain declaration
/// line starting with one of these names.
fn has_kubelet_chains(save: &str) -> bool {
    save.lines().any(|l| l.starts_with(":KUBE-IPTABLES-HINT") || l.starts_with(":KUBE-KUBELET-CANARY"))
}

/// The wrapper's decision. `save(program, args)` runs one save command and returns its output
/// (`None` when it failed or is not installed); `installed(variant)` says whether a variant's
/// tools are there.
pub fn detect_with(
    mut save: impl FnMut(&str, &[&str]) -> Option<String>,
    installed: impl Fn(Variant) -> bool,
) -> Detection {
    let probes: [(Variant, IpFamily, &[&str]); 4] = [
        (Variant::Nft, IpFamily::V4, &["-t", "mangle"]),
        (Variant::Nft, IpFamily::V6, &["-t", "mangle"]),
        (Variant::Legacy, IpFamily::V4, &[]),
        (Variant::Legacy, IpFamily::V6, &[]),
    ];
    let found = probes.iter().find_map(|(variant, family, args)| {
        let program = variant.tool(*family, "save");
        let text = save(&program, args)?;
        has_kubelet_chains(&text).then(|| Detection {
            variant: *variant,
            reason: format!("kubelet's chains are in {program}{}", if args.is_empty() { "" } else { " -t mangle" }),
        })
    });
    let d = found.unwrap_or(Detection {
        variant: Variant::Nft,
        reason: "no kubelet chain (KUBE-IPTABLES-HINT, KUBE-KUBELET-CANARY) in either iptables: the default".into(),
    });
    if !installed(d.variant) && installed(d.variant.other()) {
        return Detection {
            variant: d.variant.other(),
            reason: format!("{}, but iptables-{} is not installed", d.reason, d.variant),
        };
    }
    d
}

/// Detects the node's variant by running the save commands (in the current network namespace).
pub fn detect() -> Detection {
    detect_with(
        |program, args| {
            if !on_path(program) {
                return None;
            }
            crate::apply::run(program, args, None).ok()
        },
        Variant::installed,
    )
}

/// Whether `program` is installed (on `PATH`).
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).exists()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HINT: &str = "*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n";
    const CANARY: &str = "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n";
    const PLAIN: &str = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j KUBE-IPTABLES-HINT\nCOMMIT\n";

    /// Runs the decision against canned outputs; returns it and the commands asked, in order.
    fn decide(outputs: &[(&str, Option<&str>)], installed: &[Variant]) -> (Detection, Vec<String>) {
        let mut asked = Vec::new();
        let d = detect_with(
            |program, args| {
                asked.push(format!("{program} {}", args.join(" ")).trim().to_string());
                outputs.iter().find(|(p, _)| *p == program).and_then(|(_, o)| o.map(str::to_string))
            },
            |v| installed.contains(&v),
        );
        (d, asked)
    }

    #[test]
    fn kubelets_hint_in_iptables_nft_means_nft_and_nothing_else_is_read() {
        let (d, asked) = decide(&[("iptables-nft-save", Some(HINT))], &Variant::ALL);
        assert_eq!(d.variant, Variant::Nft);
        assert_eq!(asked, ["iptables-nft-save -t mangle"]);
        assert_eq!(d.reason, "kubelet's chains are in iptables-nft-save -t mangle");
    }

    #[test]
    fn ipv6_only_nodes_are_read_from_ip6tables() {
        let (d, asked) = decide(
            &[("iptables-nft-save", Some("")), ("ip6tables-nft-save", Some(CANARY))],
            &Variant::ALL,
        );
        assert_eq!(d.variant, Variant::Nft);
        assert_eq!(asked, ["iptables-nft-save -t mangle", "ip6tables-nft-save -t mangle"]);
    }

    #[test]
    fn legacy_is_read_whole_never_with_dash_t() {
        let (d, asked) = decide(
            &[("iptables-nft-save", Some(PLAIN)), ("iptables-legacy-save", Some(HINT))],
            &Variant::ALL,
        );
        assert_eq!(d.variant, Variant::Legacy);
        assert_eq!(asked, ["iptables-nft-save -t mangle", "ip6tables-nft-save -t mangle", "iptables-legacy-save"]);
        let (d, _) = decide(&[("ip6tables-legacy-save", Some(CANARY))], &Variant::ALL);
        assert_eq!(d.variant, Variant::Legacy);
    }

    #[test]
    fn a_jump_to_the_hint_is_not_the_hint_chain_and_nothing_found_means_nft() {
        let (d, asked) = decide(&[("iptables-nft-save", Some(PLAIN)), ("iptables-legacy-save", Some(PLAIN))], &Variant::ALL);
        assert_eq!(d.variant, Variant::Nft);
        assert_eq!(asked.len(), 4, "every probe read: {asked:?}");
        assert!(d.reason.contains("the default"), "{}", d.reason);
    }

    #[test]
    fn failing_saves_are_ignored() {
        let (d, _) = decide(&[("iptables-legacy-save", Some(HINT))], &Variant::ALL);
        assert_eq!(d.variant, Variant::Legacy, "nft saves failed (None), legacy still read");
    }

    #[test]
    fn a_variant_that_is_not_installed_gives_way_to_the_one_that_is() {
        let (d, _) = decide(&[], &[Variant::Legacy]);
        assert_eq!(d.variant, Variant::Legacy);
        assert!(d.reason.ends_with("but iptables-nft is not installed"), "{}", d.reason);
        let (d, _) = decide(&[], &[]);
        assert_eq!(d.variant, Variant::Nft, "neither installed: the wrapper's default");
    }

    #[test]
    fn names() {
        assert_eq!(Variant::Nft.tool(IpFamily::V6, "restore"), "ip6tables-nft-restore");
        assert_eq!(Variant::Legacy.name(IpFamily::V4), "iptables-legacy");
        assert_eq!("nft".parse::<Variant>(), Ok(Variant::Nft));
        assert!("x".parse::<Variant>().is_err());
    }
}
