//! DescribeCluster: one broker, node 0, which is also the controller.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::StrBytes;

use crate::code;
use crate::dispatch::Ctx;
use weir_broker::access::Operation;

/// DescribeCluster's endpoint types: 1 brokers, 2 controllers (v1+).
const BROKERS: i8 = 1;

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: DescribeClusterRequest) -> DescribeClusterResponse {
    let advertised = &cx.kafka.advertised;
    let resp = DescribeClusterResponse::default()
        .with_endpoint_type(r.endpoint_type)
        .with_cluster_id(StrBytes::from_static_str("weir"))
        .with_controller_id(BrokerId(0));
    if !cx.access.allows_cluster(Operation::Describe) {
        return resp
            .with_error_code(code::CLUSTER_AUTHORIZATION_FAILED)
            .with_error_message(Some(StrBytes::from_string(format!(
                "{} may not describe the cluster",
                cx.access.principal()
            ))));
    }
    if cx.version >= 1 && r.endpoint_type != BROKERS {
        return resp
            .with_error_code(code::UNSUPPORTED_ENDPOINT_TYPE)
            .with_error_message(Some(StrBytes::from_static_str(
                "weir has no separate controllers; ask for brokers",
            )));
    }
    resp.with_brokers(vec![
        DescribeClusterBroker::default()
            .with_broker_id(BrokerId(0))
            .with_host(StrBytes::from_string(advertised.host.clone()))
            .with_port(advertised.port),
    ])
}
