//! The few `kubevirt.io/v1` fields portkeeper reads to key, keep and migrate a VM's network identity.
//!
//! These are deliberately partial: unknown fields are ignored on read, and portkeeper never writes
//! KubeVirt objects. The CRDs generated from them (with unknown fields preserved) exist only so the
//! local test cluster can hold KubeVirt objects without running KubeVirt.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A VM: the long-lived object whose name keys the network identity of all its launcher pods.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachine",
    plural = "virtualmachines",
    shortname = "vm",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    /// Legacy start/stop switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    /// `Always`, `Halted`, `Manual`, `RerunOnFailure`, `Once`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<String>,
    /// The VMI template; only its annotations matter for addressing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<VirtualMachineTemplate>,
}

/// The part of the VM's VMI template that carries addressing annotations.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct VirtualMachineTemplate {
    /// Labels and annotations copied to each VMI and its launcher pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
}

/// Labels and annotations of a template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct TemplateMetadata {
    /// Template labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Template annotations, including `ovn.kubernetes.io/*` requests.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A running VM instance; its status says where it runs and which migration is current.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachineInstance",
    plural = "virtualmachineinstances",
    shortname = "vmi",
    namespaced,
    status = "VirtualMachineInstanceStatus"
)]
pub struct VirtualMachineInstanceSpec {}

/// Where the VMI runs and the state of its latest migration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceStatus {
    /// The node running the VMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// `Pending`, `Scheduling`, `Scheduled`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The latest migration; authoritative during a migration (the VMIM's copy lags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_state: Option<MigrationState>,
}

/// KubeVirt's `VirtualMachineInstanceMigrationState`, the fields a network controller needs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationState {
    /// UID of the VMIM this state belongs to (json `migrationUid`); a mismatch means stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_uid: Option<String>,
    /// Node the VM migrates from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_node: Option<String>,
    /// Node the VM migrates to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    /// Source launcher pod name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_pod: Option<String>,
    /// Target launcher pod name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_pod: Option<String>,
    /// Set when the migration finished (either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<bool>,
    /// Set when the migration failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<bool>,
}

/// A request to live-migrate one VMI.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachineInstanceMigration",
    plural = "virtualmachineinstancemigrations",
    shortname = "vmim",
    namespaced,
    status = "VirtualMachineInstanceMigrationStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigrationSpec {
    /// The VMI to migrate, in the same namespace.
    pub vmi_name: String,
}

/// Progress of a migration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigrationStatus {
    /// `Pending`, `Scheduling`, `Scheduled`, `PreparingTarget`, `TargetReady`, `Running`,
    /// `Succeeded`, `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The VMIM's own (lagging) copy of the migration state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_state: Option<MigrationState>,
}

/// Pod label set by KubeVirt on every launcher pod: `kubevirt.io=virt-launcher`.
pub const LABEL_APP: &str = "kubevirt.io";
/// Value of [`LABEL_APP`] on launcher pods.
pub const LAUNCHER_APP: &str = "virt-launcher";
/// Pod label naming the VM (sanitised hostname) on launcher pods.
pub const LABEL_VM_NAME: &str = "vm.kubevirt.io/name";
/// Pod annotation naming the VMI (exact, unsanitised) on launcher pods.
pub const ANNOTATION_DOMAIN: &str = "kubevirt.io/domain";
/// Target-pod label carrying the VMIM UID.
pub const LABEL_MIGRATION_JOB_UID: &str = "kubevirt.io/migrationJobUID";
/// Target-pod annotation carrying the VMIM name.
pub const ANNOTATION_MIGRATION_JOB_NAME: &str = "kubevirt.io/migrationJobName";
