//! DeleteGroups: a group without members loses its committed offsets (and with them its
//! existence); one with members is NON_EMPTY_GROUP, an unknown one GROUP_ID_NOT_FOUND.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use super::groups_admin;
use crate::dispatch::Ctx;
use crate::{code, group_error_code};
use weir_broker::access::{Operation, ResourceType};

pub(crate) async fn handle(cx: &mut Ctx<'_>, r: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results = Vec::new();
    for group in r.groups_names {
        let allowed = cx.allows(Operation::Delete, ResourceType::Group, &group.0);
        let error = match groups_admin::view(cx.kafka, &group.0) {
            _ if !allowed => code::GROUP_AUTHORIZATION_FAILED,
            None => code::GROUP_ID_NOT_FOUND,
            Some(v) if !v.members.is_empty() => code::NON_EMPTY_GROUP,
            Some(_) => match cx.kafka.broker.delete_group_offsets(&group.0, None).await {
                Ok(()) => {
                    cx.kafka.groups.forget_emptied(&group.0);
                    code::NONE
                }
                Err(e) => group_error_code(&e),
            },
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group)
                .with_error_code(error),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}
