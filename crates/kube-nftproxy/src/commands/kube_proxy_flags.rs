//! kube-proxy v1.34's flags that do not apply to kube-nftproxy: accepted under their names so that
//! kube-proxy's DaemonSet arguments run unchanged, each one given warned about once at start with
//! the reason it changes nothing here. Flags that do apply live in [`crate::commands::run::RunArgs`].
//!
//! Values are checked for their type where kube-proxy's would be (numbers, durations, booleans),
//! so a typo still fails at start as it does for kube-proxy.

use clap::Args;
use nftproxy_daemon::Settings;
use nftproxy_daemon::config::GoDuration;
use nftproxy_daemon::config::no_effect::{self, IPVS, WINDOWS};

const LOGS_UNBUFFERED: &str = "logs are written to stderr as they happen, unbuffered";

#[derive(Args, Debug, Default)]
pub struct NotApplicable {
    /// Not applied: kube-nftproxy's client (kube-rs) speaks JSON.
    #[arg(long = "kube-api-content-type", value_name = "TYPE", hide = true)]
    kube_api_content_type: Option<String>,
    /// Not applied (see the README's flag table).
    #[arg(long = "kube-api-qps", value_name = "QPS", hide = true)]
    kube_api_qps: Option<f32>,
    #[arg(long = "kube-api-burst", value_name = "N", hide = true)]
    kube_api_burst: Option<i32>,
    #[arg(long = "feature-gates", value_name = "KEY=BOOL,...", hide = true)]
    feature_gates: Option<String>,
    #[arg(long = "config-sync-period", value_name = "DURATION", hide = true)]
    config_sync_period: Option<GoDuration>,
    #[arg(long = "profiling", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", hide = true)]
    profiling: Option<bool>,
    #[arg(long = "show-hidden-metrics-for-version", value_name = "VERSION", hide = true)]
    show_hidden_metrics_for_version: Option<String>,
    /// Deprecated in kube-proxy: 0 disables the health server; other values change nothing
    /// while the address carries a port (kube-proxy's rule).
    #[arg(long = "healthz-port", value_name = "PORT", hide = true)]
    healthz_port: Option<u16>,
    #[arg(long = "metrics-port", value_name = "PORT", hide = true)]
    metrics_port: Option<u16>,
    #[arg(long = "ipvs-sync-period", value_name = "DURATION", hide = true)]
    ipvs_sync_period: Option<GoDuration>,
    #[arg(long = "ipvs-min-sync-period", value_name = "DURATION", hide = true)]
    ipvs_min_sync_period: Option<GoDuration>,
    #[arg(long = "ipvs-scheduler", value_name = "NAME", hide = true)]
    ipvs_scheduler: Option<String>,
    #[arg(long = "ipvs-exclude-cidrs", value_name = "CIDR,...", hide = true)]
    ipvs_exclude_cidrs: Option<String>,
    #[arg(long = "ipvs-strict-arp", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", hide = true)]
    ipvs_strict_arp: Option<bool>,
    #[arg(long = "ipvs-tcp-timeout", value_name = "DURATION", hide = true)]
    ipvs_tcp_timeout: Option<GoDuration>,
    #[arg(long = "ipvs-tcpfin-timeout", value_name = "DURATION", hide = true)]
    ipvs_tcpfin_timeout: Option<GoDuration>,
    #[arg(long = "ipvs-udp-timeout", value_name = "DURATION", hide = true)]
    ipvs_udp_timeout: Option<GoDuration>,
    #[arg(long = "windows-service", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", hide = true)]
    windows_service: Option<bool>,
    #[arg(long = "source-vip", value_name = "IP", hide = true)]
    source_vip: Option<String>,
    #[arg(long = "network-name", value_name = "NAME", hide = true)]
    network_name: Option<String>,
    #[arg(long = "enable-dsr", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", hide = true)]
    enable_dsr: Option<bool>,
    #[arg(long = "root-hnsendpoint-name", value_name = "NAME", hide = true)]
    root_hnsendpoint_name: Option<String>,
    #[arg(long = "forward-healthcheck-vip", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", hide = true)]
    forward_healthcheck_vip: Option<bool>,
    #[arg(long = "log-flush-frequency", value_name = "DURATION", hide = true)]
    log_flush_frequency: Option<GoDuration>,
    #[arg(long = "vmodule", value_name = "PATTERN=N,...", hide = true)]
    vmodule: Option<String>,
    #[arg(long = "log-text-split-stream", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", hide = true)]
    log_text_split_stream: Option<bool>,
    #[arg(long = "log-text-info-buffer-size", value_name = "QUANTITY", hide = true)]
    log_text_info_buffer_size: Option<String>,
    #[arg(long = "log-json-split-stream", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", hide = true)]
    log_json_split_stream: Option<bool>,
    #[arg(long = "log-json-info-buffer-size", value_name = "QUANTITY", hide = true)]
    log_json_info_buffer_size: Option<String>,
    #[arg(long = "boot-id-file", value_name = "FILE", hide = true)]
    boot_id_file: Option<String>,
    #[arg(long = "machine-id-file", value_name = "FILE", hide = true)]
    machine_id_file: Option<String>,
}

impl NotApplicable {
    /// Each flag given with why it changes nothing: (flag, reason, maps to a configuration
    /// field). `--healthz-port`/`--metrics-port` are handled by [`NotApplicable::apply`].
    fn given(&self) -> Vec<(&'static str, String, bool)> {
        let mut out = Vec::new();
        let mut note = |set: bool, flag: &'static str, why: &str, config: bool| {
            if set {
                out.push((flag, why.to_string(), config));
            }
        };
        note(self.kube_api_content_type.is_some(), "kube-api-content-type", no_effect::CONTENT_TYPE, true);
        note(self.kube_api_qps.is_some(), "kube-api-qps", no_effect::RATE_LIMIT, true);
        note(self.kube_api_burst.is_some(), "kube-api-burst", no_effect::RATE_LIMIT, true);
        note(self.config_sync_period.is_some(), "config-sync-period", no_effect::CONFIG_SYNC_PERIOD, true);
        note(self.profiling.is_some(), "profiling", no_effect::PROFILING, true);
        note(
            self.show_hidden_metrics_for_version.is_some(),
            "show-hidden-metrics-for-version",
            no_effect::HIDDEN_METRICS,
            true,
        );
        for (set, flag) in [
            (self.ipvs_sync_period.is_some(), "ipvs-sync-period"),
            (self.ipvs_min_sync_period.is_some(), "ipvs-min-sync-period"),
            (self.ipvs_scheduler.is_some(), "ipvs-scheduler"),
            (self.ipvs_exclude_cidrs.is_some(), "ipvs-exclude-cidrs"),
            (self.ipvs_strict_arp.is_some(), "ipvs-strict-arp"),
            (self.ipvs_tcp_timeout.is_some(), "ipvs-tcp-timeout"),
            (self.ipvs_tcpfin_timeout.is_some(), "ipvs-tcpfin-timeout"),
            (self.ipvs_udp_timeout.is_some(), "ipvs-udp-timeout"),
        ] {
            note(set, flag, IPVS, true);
        }
        for (set, flag) in [
            (self.windows_service.is_some(), "windows-service"),
            (self.source_vip.is_some(), "source-vip"),
            (self.network_name.is_some(), "network-name"),
            (self.enable_dsr.is_some(), "enable-dsr"),
            (self.root_hnsendpoint_name.is_some(), "root-hnsendpoint-name"),
            (self.forward_healthcheck_vip.is_some(), "forward-healthcheck-vip"),
        ] {
            note(set, flag, WINDOWS, true);
        }
        note(self.log_flush_frequency.is_some(), "log-flush-frequency", LOGS_UNBUFFERED, false);
        note(
            self.vmodule.is_some(),
            "vmodule",
            "per-file verbosity does not exist here; RUST_LOG takes per-module filters (e.g. RUST_LOG=nftproxy_daemon=debug)",
            false,
        );
        note(self.log_text_split_stream.is_some(), "log-text-split-stream", "all logs go to stderr", false);
        note(self.log_text_info_buffer_size.is_some(), "log-text-info-buffer-size", LOGS_UNBUFFERED, false);
        note(self.log_json_split_stream.is_some(), "log-json-split-stream", "all logs go to stderr", false);
        note(self.log_json_info_buffer_size.is_some(), "log-json-info-buffer-size", LOGS_UNBUFFERED, false);
        let cadvisor =
            "a cAdvisor flag kube-proxy inherits; kube-nftproxy reads neither the boot id nor the machine id";
        note(self.boot_id_file.is_some(), "boot-id-file", cadvisor, false);
        note(self.machine_id_file.is_some(), "machine-id-file", cadvisor, false);
        out
    }

    /// One warning per flag given that applies in no case.
    pub fn notes(&self) -> Vec<String> {
        self.given().into_iter().map(|(flag, why, _)| format!("--{flag}: accepted, no effect: {why}")).collect()
    }

    /// The flags given that map to configuration fields (ignored with `--config`, like kube-proxy).
    pub fn config_flags_given(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self.given().into_iter().filter(|(_, _, c)| *c).map(|(f, _, _)| f).collect();
        if self.feature_gates.is_some() {
            v.push("feature-gates");
        }
        if self.healthz_port.is_some() {
            v.push("healthz-port");
        }
        if self.metrics_port.is_some() {
            v.push("metrics-port");
        }
        v
    }

    /// Without `--config`: the deprecated port flags (0 disables a server, as in kube-proxy) and
    /// the feature gates (checked, then warned about). Returns the warnings.
    pub fn apply(&self, s: &mut Settings) -> anyhow::Result<Vec<String>> {
        let mut notes = Vec::new();
        for (port, flag, slot) in [
            (self.healthz_port, "healthz-port", &mut s.healthz_bind_address),
            (self.metrics_port, "metrics-port", &mut s.metrics_bind_address),
        ] {
            match port {
                Some(0) => {
                    *slot = None;
                    notes.push(format!("--{flag} is deprecated: 0 turns the server off, as in kube-proxy"));
                }
                Some(_) => notes.push(format!(
                    "--{flag}: accepted, no effect: deprecated, and the bind address already has a port (kube-proxy ignores it then too)"
                )),
                None => {}
            }
        }
        if let Some(gates) = &self.feature_gates {
            for gate in gates.split(',').map(str::trim).filter(|g| !g.is_empty()) {
                match gate.split_once('=') {
                    Some((name, v)) if !name.trim().is_empty() && v.trim().parse::<bool>().is_ok() => {
                        notes.push(format!(
                            "--feature-gates {}={}: accepted, no effect: {}",
                            name.trim(),
                            v.trim(),
                            no_effect::FEATURE_GATES
                        ))
                    }
                    _ => anyhow::bail!("--feature-gates: {gate:?} is not NAME=true|false"),
                }
            }
        }
        Ok(notes)
    }
}
