//! `IncrementalAlterConfigs` through librdkafka's C API: the rdkafka crate only wraps the
//! older `AlterConfigs`, which replaces a topic's whole configuration (and which brokers
//! such as the local one do not implement). This is the only `unsafe` of the workspace;
//! it runs on a blocking thread, on a result queue of its own, and frees everything it
//! allocates on every path.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char};
use std::ptr;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::types::RDKafkaErrorCode;

use super::admin::{AdminError, ConfigOp, INCREMENTAL_ALTER_CONFIGS, classify};

const API: &str = INCREMENTAL_ALTER_CONFIGS;

fn c_string(s: &str) -> Result<CString, AdminError> {
    CString::new(s).map_err(|_| AdminError::Refused {
        api: API,
        message: format!("{s:?} holds a NUL byte"),
    })
}

/// # Safety
/// `p` is null or a NUL-terminated string that lives while the result is used.
unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: non-null and NUL-terminated, per the caller.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// Frees what [`alter`] allocated, whatever path it leaves by.
struct Owned {
    resource: *mut rd::rd_kafka_ConfigResource_t,
    options: *mut rd::rd_kafka_AdminOptions_t,
    queue: *mut rd::rd_kafka_queue_t,
    event: *mut rd::rd_kafka_event_t,
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: each pointer is null or was returned by its librdkafka constructor and
        // is destroyed exactly once, here.
        unsafe {
            if !self.event.is_null() {
                rd::rd_kafka_event_destroy(self.event);
            }
            if !self.queue.is_null() {
                rd::rd_kafka_queue_destroy(self.queue);
            }
            if !self.options.is_null() {
                rd::rd_kafka_AdminOptions_destroy(self.options);
            }
            if !self.resource.is_null() {
                rd::rd_kafka_ConfigResource_destroy(self.resource);
            }
        }
    }
}

/// Applies `ops` to `topic`'s configuration; blocks for at most about `timeout`.
pub fn alter(
    client: &Client<DefaultClientContext>,
    topic: &str,
    ops: &[ConfigOp],
    timeout: Duration,
) -> Result<(), AdminError> {
    let name = c_string(topic)?;
    let ops: Vec<(CString, rd::rd_kafka_AlterConfigOpType_t, Option<CString>)> = ops
        .iter()
        .map(|op| {
            Ok(match op {
                ConfigOp::Set(k, v) => (
                    c_string(k)?,
                    rd::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET,
                    Some(c_string(v)?),
                ),
                ConfigOp::Delete(k) => (
                    c_string(k)?,
                    rd::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_DELETE,
                    None,
                ),
            })
        })
        .collect::<Result<_, AdminError>>()?;
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let rk = client.native_ptr();
    let mut owned = Owned {
        resource: ptr::null_mut(),
        options: ptr::null_mut(),
        queue: ptr::null_mut(),
        event: ptr::null_mut(),
    };
    // SAFETY: `rk` is the live handle of `client`, borrowed for the whole call; every
    // string passed lives until the call returns (librdkafka copies what it keeps); the
    // objects created are owned by `owned` and freed once; the result resources are read
    // only while the event that holds them is alive.
    unsafe {
        owned.resource = rd::rd_kafka_ConfigResource_new(
            rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
            name.as_ptr(),
        );
        for (key, op, value) in &ops {
            let value = value.as_ref().map_or(ptr::null(), |v| v.as_ptr());
            let error = rd::rd_kafka_ConfigResource_add_incremental_config(
                owned.resource,
                key.as_ptr(),
                *op,
                value,
            );
            if !error.is_null() {
                let message = text(rd::rd_kafka_error_string(error));
                rd::rd_kafka_error_destroy(error);
                return Err(AdminError::Refused { api: API, message });
            }
        }
        owned.options = rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_INCREMENTALALTERCONFIGS,
        );
        let mut errstr = [0 as c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            owned.options,
            millis,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        owned.queue = rd::rd_kafka_queue_new(rk);
        let mut resources = [owned.resource];
        rd::rd_kafka_IncrementalAlterConfigs(
            rk,
            resources.as_mut_ptr(),
            resources.len(),
            owned.options,
            owned.queue,
        );
        owned.event = rd::rd_kafka_queue_poll(owned.queue, millis.saturating_add(5_000));
        if owned.event.is_null() {
            return Err(AdminError::Unreachable {
                api: API,
                message: format!("no answer within {} s", timeout.as_secs() + 5),
            });
        }
        let err = rd::rd_kafka_event_error(owned.event);
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            let detail = text(rd::rd_kafka_event_error_string(owned.event));
            return Err(classify(API, RDKafkaErrorCode::from(err), Some(&detail)));
        }
        let result = rd::rd_kafka_event_IncrementalAlterConfigs_result(owned.event);
        if result.is_null() {
            return Err(AdminError::Refused {
                api: API,
                message: "the answer was not an IncrementalAlterConfigs result".into(),
            });
        }
        let mut count = 0usize;
        let results = rd::rd_kafka_IncrementalAlterConfigs_result_resources(result, &mut count);
        for i in 0..count {
            let resource = *results.add(i);
            let err = rd::rd_kafka_ConfigResource_error(resource);
            if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                let detail = text(rd::rd_kafka_ConfigResource_error_string(resource));
                return Err(classify(API, RDKafkaErrorCode::from(err), Some(&detail)));
            }
        }
    }
    Ok(())
}
