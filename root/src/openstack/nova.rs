//! The few Nova, Placement and Glance calls the hypervisor actions make, typed: compute services,
//! hypervisors, servers (every page), flavors, images, and each provider's free capacity.
//!
//! Only the fields banyan reads are kept; anything else in Nova's answers is ignored, so a newer
//! Nova with more fields is read the same.

use super::client::{Cloud, OsError, OsErrorKind, Service};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Largest page asked for; Nova caps it with its own `max_limit` (1000 by default).
const PAGE: usize = 1000;
/// Pages followed at most: a loop in `*_links` must end.
const MAX_PAGES: usize = 10_000;

/// A `nova-compute` service as `GET /os-services` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ComputeService {
    pub id: String,
    pub host: String,
    /// `enabled` or `disabled`.
    pub status: String,
    /// `up` or `down`.
    pub state: String,
    #[serde(default)]
    pub disabled_reason: Option<String>,
    #[serde(default)]
    pub forced_down: bool,
}

impl ComputeService {
    pub fn enabled(&self) -> bool {
        self.status == "enabled"
    }
    pub fn up(&self) -> bool {
        self.state == "up"
    }
}

/// A server, with what the tables show.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub status: String,
    /// The compute host it runs on (admin only; empty before scheduling).
    pub host: String,
    /// Its addresses, every network's.
    pub addresses: Vec<String>,
    /// Why it is in ERROR, when Nova says.
    pub fault: Option<String>,
}

#[derive(Deserialize)]
struct RawServer {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    status: String,
    #[serde(rename = "OS-EXT-SRV-ATTR:host", default)]
    host: Option<String>,
    #[serde(default)]
    addresses: BTreeMap<String, Vec<RawAddress>>,
    #[serde(default)]
    fault: Option<RawFault>,
}

#[derive(Deserialize)]
struct RawAddress {
    addr: String,
}

#[derive(Deserialize)]
struct RawFault {
    #[serde(default)]
    message: String,
}

impl From<RawServer> for Server {
    fn from(r: RawServer) -> Server {
        Server {
            id: r.id,
            name: r.name,
            status: r.status,
            host: r.host.unwrap_or_default(),
            addresses: r
                .addresses
                .into_values()
                .flatten()
                .map(|a| a.addr)
                .collect(),
            fault: r.fault.map(|f| f.message).filter(|m| !m.is_empty()),
        }
    }
}

/// A flavor's size.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Flavor {
    pub id: String,
    pub name: String,
    pub vcpus: u64,
    pub ram: u64,
    pub disk: u64,
}

fn bad(what: &str, e: impl std::fmt::Display) -> OsError {
    OsError::new(
        OsErrorKind::BadAnswer,
        format!("Nova answered {what} in an unexpected shape: {e}"),
    )
}

fn field<T: for<'de> Deserialize<'de>>(v: &Value, key: &str, what: &str) -> Result<T, OsError> {
    serde_json::from_value(v.get(key).cloned().unwrap_or(Value::Null)).map_err(|e| bad(what, e))
}

/// Every `nova-compute` service.
pub fn compute_services(cloud: &Cloud) -> Result<Vec<ComputeService>, OsError> {
    let v = cloud.get(Service::Compute, "/os-services?binary=nova-compute")?;
    field(&v, "services", "the compute services")
}

/// Enables or disables a compute service (by id, microversion 2.53+). A reason goes with a
/// disable.
pub fn set_service(
    cloud: &Cloud,
    id: &str,
    enable: bool,
    reason: Option<&str>,
) -> Result<ComputeService, OsError> {
    let mut body = json!({"status": if enable { "enabled" } else { "disabled" }});
    if let (false, Some(r)) = (enable, reason) {
        body["disabled_reason"] = json!(r);
    }
    let v = cloud.request(
        Service::Compute,
        "PUT",
        &format!("/os-services/{}", encode(id)),
        Some(&body),
    )?;
    field(&v, "service", "a changed compute service")
}

/// Every server on `host` (every project's), or every server of the cloud without a host;
/// every page.
pub fn servers(cloud: &Cloud, host: Option<&str>) -> Result<Vec<Server>, OsError> {
    match host {
        Some(h) => servers_where(cloud, "host", h),
        None => servers_where(cloud, "", ""),
    }
}

/// Every server (every project's) whose `key` is `value` (a filter of Nova's server list:
/// `host`, `reservation_id`), every page; every server with an empty key.
pub fn servers_where(cloud: &Cloud, key: &str, value: &str) -> Result<Vec<Server>, OsError> {
    let mut out = Vec::new();
    let mut marker: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut path = format!("/servers/detail?all_tenants=1&limit={PAGE}");
        if !key.is_empty() {
            path.push_str(&format!("&{key}={}", encode(value)));
        }
        if let Some(m) = &marker {
            path.push_str(&format!("&marker={}", encode(m)));
        }
        let v = cloud.get(Service::Compute, &path)?;
        let page: Vec<RawServer> = field(&v, "servers", "a server list")?;
        let more = v["servers_links"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x["rel"] == "next"));
        let last = page.last().map(|s| s.id.clone());
        out.extend(page.into_iter().map(Server::from));
        match (more, last) {
            (true, Some(l)) if marker.as_deref() != Some(l.as_str()) => marker = Some(l),
            _ => return Ok(out),
        }
    }
    Ok(out)
}

/// Deletes a server; one already gone counts as deleted.
pub fn delete_server(cloud: &Cloud, id: &str) -> Result<(), OsError> {
    match cloud.request(
        Service::Compute,
        "DELETE",
        &format!("/servers/{}", encode(id)),
        None,
    ) {
        Ok(_) => Ok(()),
        Err(e) if e.kind == OsErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A flavor by id or name.
pub fn flavor(cloud: &Cloud, name_or_id: &str) -> Result<Flavor, OsError> {
    let v = cloud.get(Service::Compute, "/flavors/detail?is_public=None")?;
    let all: Vec<Flavor> = field(&v, "flavors", "the flavors")?;
    all.iter()
        .find(|f| f.id == name_or_id)
        .or_else(|| all.iter().find(|f| f.name == name_or_id))
        .cloned()
        .ok_or_else(|| {
            OsError::new(
                OsErrorKind::NotFound,
                format!(
                    "no flavor {name_or_id:?} (there are: {})",
                    all.iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
}

/// An image's id from its id or name: through Glance when the catalog has it, else as given.
pub fn image_id(cloud: &Cloud, name_or_id: &str) -> Result<String, OsError> {
    if !cloud.has(Service::Image)? {
        return Ok(name_or_id.to_string());
    }
    match cloud.get(
        Service::Image,
        &format!("/v2/images/{}", encode(name_or_id)),
    ) {
        Ok(v) => {
            if let Some(id) = v["id"].as_str() {
                return Ok(id.to_string());
            }
        }
        Err(e) if e.kind == OsErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let v = cloud.get(
        Service::Image,
        &format!("/v2/images?name={}", encode(name_or_id)),
    )?;
    let ids: Vec<&str> = v["images"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["id"].as_str())
        .collect();
    match ids.as_slice() {
        [id] => Ok(id.to_string()),
        [] => Err(OsError::new(
            OsErrorKind::NotFound,
            format!("Glance has no image {name_or_id:?}"),
        )),
        many => Err(OsError::new(
            OsErrorKind::Conflict,
            format!(
                "{} images are named {name_or_id:?}: give the image's id",
                many.len()
            ),
        )),
    }
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct Boot<'a> {
    pub name: &'a str,
    pub flavor: &'a str,
    pub image: &'a str,
    pub host: &'a str,
    pub count: u64,
    pub key_name: Option<&'a str>,
    /// Base64 already.
    pub user_data: Option<&'a str>,
}

/// Boots `count` servers on one host in one request (Nova names them `NAME-1`, `NAME-2`, ...);
/// returns the reservation id.
pub fn boot(cloud: &Cloud, b: &Boot) -> Result<String, OsError> {
    let mut server = json!({
        "name": b.name,
        "flavorRef": b.flavor,
        "imageRef": b.image,
        "networks": "none",
        "host": b.host,
        "min_count": b.count,
        "max_count": b.count,
        "return_reservation_id": true,
    });
    if let Some(k) = b.key_name {
        server["key_name"] = json!(k);
    }
    if let Some(u) = b.user_data {
        server["user_data"] = json!(u);
    }
    let v = cloud.request(
        Service::Compute,
        "POST",
        "/servers",
        Some(&json!({ "server": server })),
    )?;
    Ok(v["reservation_id"].as_str().unwrap_or_default().to_string())
}

/// Placement's resource providers by name (a compute node's provider is named after its
/// hypervisor hostname): name -> uuid.
pub fn providers(cloud: &Cloud) -> Result<BTreeMap<String, String>, OsError> {
    let v = cloud.get(Service::Placement, "/resource_providers")?;
    Ok(v["resource_providers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_string(),
                p["uuid"].as_str()?.to_string(),
            ))
        })
        .collect())
}

/// How many more servers of `flavor` the provider `uuid` can take, as Placement counts:
/// for each resource, (total - reserved) x allocation ratio - used, capped by max_unit.
pub fn free_slots(cloud: &Cloud, uuid: &str, flavor: &Flavor) -> Result<u64, OsError> {
    let inv = cloud.get(
        Service::Placement,
        &format!("/resource_providers/{}/inventories", encode(uuid)),
    )?;
    let usage = cloud.get(
        Service::Placement,
        &format!("/resource_providers/{}/usages", encode(uuid)),
    )?;
    Ok(slots(&inv["inventories"], &usage["usages"], flavor))
}

/// The arithmetic of [`free_slots`], on Placement's documents.
pub fn slots(inventories: &Value, usages: &Value, flavor: &Flavor) -> u64 {
    let mut best = u64::MAX;
    for (class, need) in [
        ("VCPU", flavor.vcpus),
        ("MEMORY_MB", flavor.ram),
        ("DISK_GB", flavor.disk),
    ] {
        if need == 0 {
            continue;
        }
        let i = &inventories[class];
        let Some(total) = i["total"].as_f64() else {
            return 0;
        };
        let reserved = i["reserved"].as_f64().unwrap_or(0.0);
        let ratio = i["allocation_ratio"].as_f64().unwrap_or(1.0);
        let max_unit = i["max_unit"].as_f64().unwrap_or(f64::MAX);
        if (need as f64) > max_unit {
            return 0;
        }
        let used = usages[class].as_f64().unwrap_or(0.0);
        let free = ((total - reserved) * ratio - used).max(0.0);
        best = best.min((free / need as f64).floor() as u64);
    }
    if best == u64::MAX {
        0
    } else {
        best
    }
}

/// Percent-encodes a path or query component.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_slots_follow_placement_arithmetic() {
        let flavor = Flavor {
            id: "1".into(),
            name: "small".into(),
            vcpus: 2,
            ram: 1024,
            disk: 10,
        };
        let inv = json!({
            "VCPU": {"total": 8, "reserved": 0, "allocation_ratio": 4.0, "max_unit": 8},
            "MEMORY_MB": {"total": 8192, "reserved": 512, "allocation_ratio": 1.0, "max_unit": 8192},
            "DISK_GB": {"total": 100, "reserved": 0, "allocation_ratio": 1.0, "max_unit": 100},
        });
        // VCPU: 32/2 = 16; memory: 7680/1024 = 7; disk: 100/10 = 10.
        assert_eq!(slots(&inv, &json!({}), &flavor), 7);
        // With 2 servers already there: memory (7680-2048)/1024 = 5.
        let used = json!({"VCPU": 4, "MEMORY_MB": 2048, "DISK_GB": 20});
        assert_eq!(slots(&inv, &used, &flavor), 5);
        // A flavor larger than max_unit never fits; a missing class means no room.
        let big = Flavor {
            vcpus: 16,
            ..flavor.clone()
        };
        assert_eq!(slots(&inv, &json!({}), &big), 0);
        assert_eq!(
            slots(&json!({"VCPU": inv["VCPU"].clone()}), &json!({}), &flavor),
            0
        );
        // Full: never negative.
        let full = json!({"MEMORY_MB": 9000});
        assert_eq!(slots(&inv, &full, &flavor), 0);
    }

    #[test]
    fn servers_are_read_from_novas_shape() {
        let raw: RawServer = serde_json::from_value(json!({
            "id": "u1", "name": "vm-1", "status": "ERROR",
            "OS-EXT-SRV-ATTR:host": "cn3",
            "addresses": {"net1": [{"addr": "10.0.0.5", "version": 4}], "net2": [{"addr": "fd00::5"}]},
            "fault": {"message": "No valid host was found.", "code": 500},
            "flavor": {"vcpus": 1}
        }))
        .unwrap();
        let s = Server::from(raw);
        assert_eq!(s.host, "cn3");
        assert_eq!(s.addresses, vec!["10.0.0.5", "fd00::5"]);
        assert_eq!(s.fault.as_deref(), Some("No valid host was found."));
    }

    #[test]
    fn components_are_encoded() {
        assert_eq!(encode("cn1.example.org"), "cn1.example.org");
        assert_eq!(encode("a b&c=d/e"), "a%20b%26c%3Dd%2Fe");
    }
}
