//! Kubernetes objects into kube-nftproxy's service model.
//!
//! [`convert`] turns k8s-openapi `Service`, `EndpointSlice` and `Node` objects into model values,
//! validating every field the proxy uses; it is shared by the manifest loader and the watcher.
//! [`load_path`] reads YAML or JSON manifests — exactly what
//! `kubectl get services,endpointslices,nodes -A -o yaml` prints — into a [`Loaded`] state. One bad
//! object becomes one [`Warning`] naming the object and the field; everything else is still used.

pub mod convert;
mod load;

pub use convert::{ObjectError, Skipped};
pub use load::{
    LoadError, Loaded, Object, Warning, check_path, load_path, load_path_with, manifest_files, stream_path,
};

#[cfg(test)]
mod tests;
