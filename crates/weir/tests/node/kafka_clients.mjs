// Drives weir's Kafka listener with a real Node.js Kafka client; prints one JSON line last.
//
// Usage: node kafka_clients.mjs LIB SCENARIO BOOTSTRAP TOPIC GROUP
//
// LIB is one of:
// - kafkajs (2.2.4): a classic client. Against weir it sends only pre-flexible versions:
//   ApiVersions v2, Metadata v6, Produce v7, InitProducerId v1, Fetch v11, ListOffsets v3,
//   FindCoordinator v2, JoinGroup v5, SyncGroup v3, Heartbeat v3, LeaveGroup v3,
//   OffsetCommit v5, OffsetFetch v4, ListGroups v2, DescribeGroups v2, CreateTopics v3,
//   CreatePartitions v1, DeleteRecords v1, DescribeConfigs v2, AlterConfigs v1 (its
//   src/protocol/requests/*/index.js stop there; it takes the highest version both sides know).
// - platformatic (@platformatic/kafka 1.35.0): a modern client. Its Base[kGetApi]
//   (dist/clients/base/base.js) takes, for each API, the highest version weir advertises that
//   it implements (dist/apis/*/<name>-v<N>.js). Against weir that is ApiVersions v3 (its first
//   request), Metadata v12, Produce v11, InitProducerId v5, Fetch v17, ListOffsets v9,
//   FindCoordinator v6, JoinGroup v9, SyncGroup v5, Heartbeat v4, LeaveGroup v5,
//   OffsetCommit v9, OffsetFetch v9, ListGroups v5, DescribeGroups v5, CreateTopics v7,
//   CreatePartitions v3, DeleteRecords v2, DescribeConfigs v4, AlterConfigs v2,
//   IncrementalAlterConfigs v1: all flexible (KIP-482). The one exception is OffsetDelete v0
//   (deleteConsumerGroupOffsets), which has no flexible version in Kafka at all. Against an
//   older broker it would fall back to pre-flexible Produce v7/v8, ListOffsets v5,
//   DescribeConfigs v2/v3 and CreatePartitions v1, but never to anything older.
//
// Scenarios (TOPIC exists with 3 partitions, except for admin, which creates it):
// - produce: 200 keyed records "LIB-i" from an idempotent producer (acks=all), in sends of 20;
//   prints the (partition, offset) the broker acknowledged for each record.
// - consume: a member of GROUP reads TOPIC from the beginning, committing nothing, until it
//   has 200 records; prints their values.
// - group: produces 300 records "g-i"; members A and B of GROUP read them, each record
//   committed before the next is taken; B leaves after 30 and a new member C joins, and A and
//   C read the rest. Then 50 more ("r-i") are produced and a fresh member D reads them, which
//   it can do without reading the g-i again only by resuming from the group's commits.
//   Prints every value read in the first part, how many times one was read twice, how many
//   each member read, and what D read.
// - admin: creates TOPIC (2 partitions), lists topics and reads its metadata, has a member of
//   GROUP read and commit the 30 records it produces, lists and describes GROUP while that
//   member runs, then reads, sets and resets the group's offsets, grows TOPIC to 4
//   partitions, deletes the records below offset 7 of partition 0, reads the partitions'
//   first and next offsets, and reads and alters TOPIC's configs; prints what each returned.
//
// Bounded: the run gives up after 60 s (an admin call after 15 s), naming what it was doing,
// and any failure exits non-zero with the reason on stderr.

import { setTimeout as sleep } from 'node:timers/promises';

const [LIB, SCENARIO, BOOTSTRAP, TOPIC, GROUP] = process.argv.slice(2);
// Every scenario but produce reads through GROUP.
if (!TOPIC || (!GROUP && SCENARIO !== 'produce')) {
    die('usage: kafka_clients.mjs LIB SCENARIO BOOTSTRAP TOPIC GROUP');
}
const DEADLINE_MS = 60_000;
// Fast rebalances: members learn of a new round within a heartbeat, and a member that stops
// heartbeating is dropped within seconds rather than the clients' default minute.
const HEARTBEAT_MS = 300;
const SESSION_MS = 6_000;
const REBALANCE_MS = 10_000;

let phase = 'starting';
// What the scenario has seen so far, for the message when it gives up.
let progress = () => '';
const watchdog = setTimeout(
    () => die(`gave up after ${DEADLINE_MS / 1000} s, during: ${phase}; ${progress()}`),
    DEADLINE_MS,
);

function die(message) {
    process.stderr.write(`kafka_clients.mjs ${LIB} ${SCENARIO}: ${message}\n`);
    process.exit(1);
}

function out(value) {
    // @platformatic/kafka gives offsets as BigInts, which JSON.stringify refuses; they print
    // as numbers, which every offset here fits. (kafkajs's decimal strings are converted
    // where they are read.)
    const number = v => {
        if (!Number.isSafeInteger(Number(v))) {
            throw new Error(`offset ${v} is not a safe integer`);
        }
        return Number(v);
    };
    process.stdout.write(JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? number(v) : v)) + '\n');
}

// Resolves when `done()` holds; polls, since the condition is fed by consumer callbacks.
async function until(what, done) {
    phase = what;
    while (!done()) {
        await sleep(20);
    }
}

// Records "prefix-i" keyed "k(i % 7)", in sends of 20, with partition i % partitions named
// explicitly so that each send's acknowledgement (one base offset per partition) maps back to
// its records.
function sends(prefix, n, partitions) {
    const all = Array.from({ length: n }, (_, i) => ({
        key: `k${i % 7}`,
        value: `${prefix}-${i}`,
        partition: i % partitions,
    }));
    return Array.from({ length: Math.ceil(n / 20) }, (_, i) => all.slice(20 * i, 20 * i + 20));
}

// The (partition, offset) of each record of a send, from the base offset the broker returned
// per partition: a batch's records take consecutive offsets from its base, in send order.
function perRecord(sent, bases) {
    const next = new Map(bases);
    return sent.map(r => {
        if (!next.has(r.partition)) {
            throw new Error(`no acknowledgement for partition ${r.partition}`);
        }
        const offset = next.get(r.partition);
        next.set(r.partition, offset + 1n);
        return [r.partition, offset];
    });
}

// --- kafkajs --------------------------------------------------------------------------------

async function kafkajs() {
    const { ConfigResourceTypes, Kafka, Partitioners, logLevel } = (await import('kafkajs')).default;
    const kafka = new Kafka({
        clientId: 'weir-test-kafkajs',
        brokers: [BOOTSTRAP],
        logLevel: logLevel.WARN,
        // Logs go to stderr: stdout carries the one JSON line.
        logCreator: () => ({ namespace, level, log }) => {
            const { message, ...extra } = log;
            process.stderr.write(`kafkajs ${level} ${namespace}: ${message} ${JSON.stringify(extra)}\n`);
        },
    });

    async function produce(prefix, n, partitions = 3) {
        // Every record names its partition; the partitioner is set only to silence kafkajs's
        // warning that its default changed in 2.0.
        const producer = kafka.producer({
            idempotent: true,
            maxInFlightRequests: 1,
            createPartitioner: Partitioners.DefaultPartitioner,
        });
        await producer.connect();
        const acked = [];
        try {
            for (const sent of sends(prefix, n, partitions)) {
                const acks = await producer.send({ topic: TOPIC, acks: -1, messages: sent });
                for (const a of acks) {
                    if (a.errorCode !== 0) {
                        throw new Error(`partition ${a.partition}: error ${a.errorCode}`);
                    }
                }
                acked.push(...perRecord(sent, acks.map(a => [a.partition, BigInt(a.baseOffset)])));
            }
        } finally {
            await producer.disconnect();
        }
        return acked;
    }

    // A member of `group` that passes each record's value to `handle` and then, if `commit`,
    // commits past it before taking the next; `stop()` leaves the group.
    async function member(group, handle, commit = true) {
        const consumer = kafka.consumer({
            groupId: group,
            sessionTimeout: SESSION_MS,
            heartbeatInterval: HEARTBEAT_MS,
            rebalanceTimeout: REBALANCE_MS,
            maxWaitTimeInMs: 200,
        });
        consumer.on(consumer.events.CRASH, ({ payload }) => {
            if (!payload.restart) {
                die(`member of ${group} crashed during ${phase}: ${payload.error?.stack}`);
            }
        });
        await consumer.connect();
        await consumer.subscribe({ topics: [TOPIC], fromBeginning: true });
        let commitFailures = 0;
        await consumer.run({
            autoCommit: false,
            eachMessage: async ({ topic, partition, message }) => {
                await handle(message.value.toString());
                if (!commit) {
                    return;
                }
                try {
                    const offset = (BigInt(message.offset) + 1n).toString();
                    await consumer.commitOffsets([{ topic, partition, offset }]);
                } catch (e) {
                    // A rebalance fenced the commit: the record is read again by its next
                    // owner. Rethrown, so that kafkajs rejoins instead of reading on.
                    commitFailures += 1;
                    process.stderr.write(`commit failed: ${e.message}\n`);
                    throw e;
                }
            },
        });
        return {
            stop: () => consumer.disconnect(),
            commitFailures: () => commitFailures,
        };
    }

    async function admin() {
        const admin = kafka.admin();
        await admin.connect();
        const resource = { type: ConfigResourceTypes.TOPIC, name: TOPIC };
        const configs = async () => {
            const described = await admin.describeConfigs({ resources: [resource], includeSynonyms: false });
            const entries = described.resources[0].configEntries;
            return Object.fromEntries(entries.map(e => [e.configName, e.configValue]));
        };
        return {
            createTopic: partitions =>
                admin.createTopics({
                    topics: [{ topic: TOPIC, numPartitions: partitions }],
                    waitForLeaders: true,
                }),
            listTopics: () => admin.listTopics(),
            partitions: async () => {
                const { topics } = await admin.fetchTopicMetadata({ topics: [TOPIC] });
                return topics[0].partitions.map(p => p.partitionId).sort((x, y) => x - y);
            },
            listGroups: async () => {
                const { groups } = await admin.listGroups();
                return groups.map(g => ({ groupId: g.groupId, protocolType: g.protocolType }));
            },
            describeGroup: async () => {
                const [g] = (await admin.describeGroups([GROUP])).groups;
                return {
                    groupId: g.groupId,
                    state: g.state,
                    protocolType: g.protocolType,
                    protocol: g.protocol,
                    members: g.members.map(m => ({ memberId: m.memberId, clientId: m.clientId })),
                };
            },
            committed: async () => {
                const [t] = await admin.fetchOffsets({ groupId: GROUP, topics: [TOPIC] });
                return t.partitions.map(p => [p.partition, Number(p.offset)]).sort((x, y) => x[0] - y[0]);
            },
            // kafkajs commits through a consumer of the group that it starts for the purpose, so
            // the group must be empty.
            setOffset: (partition, offset) =>
                admin.setOffsets({
                    groupId: GROUP,
                    topic: TOPIC,
                    partitions: [{ partition, offset: String(offset) }],
                }),
            // Commits -2 (EARLIEST_OFFSET) for every partition, which Kafka stores as given: a
            // consumer of the group then starts at the log start.
            reset: () => admin.resetOffsets({ groupId: GROUP, topic: TOPIC, earliest: true }),
            grow: count => admin.createPartitions({ topicPartitions: [{ topic: TOPIC, count }] }),
            deleteRecords: (partition, offset) =>
                admin.deleteTopicRecords({
                    topic: TOPIC,
                    partitions: [{ partition, offset: String(offset) }],
                }),
            watermarks: async () =>
                (await admin.fetchTopicOffsets(TOPIC))
                    .map(p => ({ partition: p.partition, low: Number(p.low), high: Number(p.high) }))
                    .sort((x, y) => x.partition - y.partition),
            configs,
            alterConfigs: entries => {
                const configEntries = Object.entries(entries).map(([name, value]) => ({ name, value }));
                return admin.alterConfigs({ resources: [{ ...resource, configEntries }] });
            },
            close: () => admin.disconnect(),
        };
    }

    return { produce, member, admin };
}

// --- @platformatic/kafka ------------------------------------------------------------------

async function platformatic() {
    const { Admin, Consumer, Producer, stringSerializers, stringDeserializers, ConfigResourceTypes } =
        await import('@platformatic/kafka');
    const base = { bootstrapBrokers: [BOOTSTRAP], retries: 5, retryDelay: 200 };

    async function produce(prefix, n, partitions = 3) {
        // An idempotent producer always sends acks=all.
        const producer = new Producer({
            ...base,
            clientId: 'weir-test-platformatic',
            idempotent: true,
            serializers: stringSerializers,
        });
        const acked = [];
        try {
            for (const sent of sends(prefix, n, partitions)) {
                const result = await producer.send({ messages: sent.map(r => ({ topic: TOPIC, ...r })) });
                acked.push(...perRecord(sent, result.offsets.map(o => [o.partition, o.offset])));
            }
        } finally {
            await producer.close();
        }
        return acked;
    }

    // As kafkajs's member above.
    async function member(group, handle, commit = true) {
        const consumer = new Consumer({
            ...base,
            clientId: `weir-test-platformatic-${group}`,
            groupId: group,
            deserializers: stringDeserializers,
            sessionTimeout: SESSION_MS,
            heartbeatInterval: HEARTBEAT_MS,
            rebalanceTimeout: REBALANCE_MS,
            maxWaitTime: 200,
        });
        const stream = await consumer.consume({
            topics: [TOPIC],
            mode: 'committed',
            fallbackMode: 'earliest',
            autocommit: false,
        });
        let commitFailures = 0;
        // The next offset to handle per partition: what this member handled last, plus one.
        const next = new Map();
        const owned = ({ topic, partition }) =>
            consumer.assignments?.some(a => a.topic === topic && a.partitions.includes(partition));
        const loop = (async () => {
            for await (const message of stream) {
                // After a rebalance the stream still holds what it fetched before, even for
                // partitions now assigned to another member, and then fetches its partitions
                // again from the group's commits, so it can deliver an offset twice. A commit
                // goes out under the current generation, which a broker accepts, so handling
                // either kind would move a partition's commit backwards, and the group's next
                // member would read it all again. Skip them: a revoked partition's new owner
                // reads it from the commits, and a repeated offset has been handled.
                if (!owned(message) || message.offset < (next.get(message.partition) ?? 0n)) {
                    continue;
                }
                await handle(message.value);
                next.set(message.partition, message.offset + 1n);
                if (!commit || !owned(message)) {
                    continue;
                }
                try {
                    await message.commit();
                } catch (e) {
                    // A rebalance fenced the commit: the record is read again by its next owner.
                    commitFailures += 1;
                    process.stderr.write(`commit failed: ${e.message}\n`);
                }
            }
        })().catch(e => die(`member of ${group} failed during ${phase}: ${e?.stack ?? e}`));
        return {
            stop: async () => {
                await stream.close();
                await loop;
                await consumer.close();
            },
            commitFailures: () => commitFailures,
        };
    }

    async function admin() {
        const admin = new Admin({ ...base, clientId: 'weir-test-platformatic-admin' });
        const resource = { resourceType: ConfigResourceTypes.TOPIC, resourceName: TOPIC };
        const configs = async () => {
            const [described] = await admin.describeConfigs({ resources: [resource] });
            return Object.fromEntries(described.configs.map(c => [c.name, c.value]));
        };
        // Each partition's offset at `timestamp`: -2 asks for the first, -1 for the next to write.
        const watermark = async timestamp => {
            const meta = await admin.metadata({ topics: [TOPIC], forceUpdate: true });
            const partitions = Array.from({ length: meta.topics.get(TOPIC).partitionsCount }, (_, i) => ({
                partitionIndex: i,
                timestamp,
            }));
            const [t] = await admin.listOffsets({ topics: [{ name: TOPIC, partitions }] });
            return new Map(t.partitions.map(p => [p.partitionIndex, Number(p.offset)]));
        };
        return {
            createTopic: partitions => admin.createTopics({ topics: [TOPIC], partitions, replicas: 1 }),
            listTopics: () => admin.listTopics(),
            partitions: async () => {
                const meta = await admin.metadata({ topics: [TOPIC], forceUpdate: true });
                return meta.topics.get(TOPIC).partitions.map((_, i) => i);
            },
            listGroups: async () => {
                const groups = [...(await admin.listGroups()).values()];
                return groups.map(g => ({ groupId: g.id, protocolType: g.protocolType }));
            },
            describeGroup: async () => {
                const g = (await admin.describeGroups({ groups: [GROUP] })).get(GROUP);
                return {
                    groupId: g.id,
                    state: g.state,
                    protocolType: g.protocolType,
                    protocol: g.protocol,
                    members: [...g.members.values()].map(m => ({ memberId: m.id, clientId: m.clientId })),
                };
            },
            committed: async () => {
                const [g] = await admin.listConsumerGroupOffsets({ groups: [GROUP] });
                const t = g.topics.find(t => t.name === TOPIC);
                return (t?.partitions ?? [])
                    .map(p => [p.partitionIndex, Number(p.committedOffset)])
                    .sort((x, y) => x[0] - y[0]);
            },
            setOffset: (partition, offset) =>
                admin.alterConsumerGroupOffsets({
                    groupId: GROUP,
                    topics: [{ name: TOPIC, partitionOffsets: [{ partition, offset: BigInt(offset) }] }],
                }),
            // The library has no reset to a log end; it can delete a partition's commit
            // (OffsetDelete), after which the group's consumers start where their reset policy
            // says.
            reset: () =>
                admin.deleteConsumerGroupOffsets({
                    groupId: GROUP,
                    topics: [{ name: TOPIC, partitionIndexes: [1] }],
                }),
            grow: count => admin.createPartitions({ topics: [{ name: TOPIC, count }] }),
            deleteRecords: (partition, offset) =>
                admin.deleteRecords({
                    topics: [{ name: TOPIC, partitions: [{ partition, offset: BigInt(offset) }] }],
                }),
            watermarks: async () => {
                const [low, high] = [await watermark(-2n), await watermark(-1n)];
                return [...low.keys()]
                    .sort((x, y) => x - y)
                    .map(partition => ({ partition, low: low.get(partition), high: high.get(partition) }));
            },
            configs,
            alterConfigs: entries => {
                const configs = Object.entries(entries).map(([name, value]) => ({ name, value }));
                return admin.alterConfigs({ resources: [{ ...resource, configs }] });
            },
            incrementalAlterConfigs: entries => {
                // configOperation 0 is SET.
                const configs = Object.entries(entries).map(([name, value]) => ({
                    name,
                    configOperation: 0,
                    value,
                }));
                return admin.incrementalAlterConfigs({ resources: [{ ...resource, configs }] });
            },
            close: () => admin.close(),
        };
    }

    return { produce, member, admin };
}

// --- scenarios ------------------------------------------------------------------------------

async function consume(lib, n) {
    const values = [];
    const m = await lib.member(
        GROUP,
        async value => {
            values.push(value);
        },
        false,
    );
    progress = () => `${values.length} of ${n} read`;
    await until(`reading ${n} records`, () => values.length >= n);
    await m.stop();
    return values;
}

async function group(lib) {
    phase = 'producing g-0..g-299';
    await lib.produce('g', 300);
    const all = Array.from({ length: 300 }, (_, i) => `g-${i}`);
    const seen = [];
    const resumed = [];
    const counts = { A: 0, B: 0, C: 0, D: 0 };
    progress = () => {
        const unseen = all.filter(v => !seen.includes(v));
        const first = unseen.slice(0, 20);
        return `read by each: ${JSON.stringify(counts)}; ${unseen.length} of g-* unseen: ${first}`;
    };
    // Handling takes time, A's the longest, so that B and C get partitions while records are
    // left: otherwise one member could read everything before the others have joined.
    const handler = (name, ms) => async value => {
        await sleep(ms);
        counts[name] += 1;
        (name === 'D' ? resumed : seen).push(value);
    };
    phase = 'A and B joining';
    const [a, b] = await Promise.all([
        lib.member(GROUP, handler('A', 30)),
        lib.member(GROUP, handler('B', 5)),
    ]);
    await until('B reading 30 records', () => counts.B >= 30);
    phase = 'B leaving';
    await b.stop();
    phase = 'C joining';
    const c = await lib.member(GROUP, handler('C', 5));
    await until('A and C reading the rest', () => new Set(seen).size >= all.length);
    phase = 'A and C leaving';
    await Promise.all([a.stop(), c.stop()]);

    phase = 'producing r-0..r-49';
    await lib.produce('r', 50);
    phase = 'D joining';
    const d = await lib.member(GROUP, handler('D', 0));
    await until('D reading r-0..r-49', () => resumed.filter(v => v.startsWith('r-')).length >= 50);
    // A second more, to catch anything read twice or past the end.
    await sleep(1000);
    await d.stop();
    return {
        seen: [...new Set(seen)].sort(),
        duplicates: seen.length - new Set(seen).size,
        counts,
        commit_failures: a.commitFailures() + b.commitFailures() + c.commitFailures(),
        resumed,
    };
}

// Runs one admin step, bounded on its own: a client that never answers (kafkajs's setOffsets
// waits on a consumer that may have crashed) fails the scenario at once, naming the step.
async function step(name, call) {
    phase = name;
    let timer;
    const late = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${name} did not finish within 15 s`)), 15_000);
    });
    try {
        return await Promise.race([call(), late]);
    } finally {
        clearTimeout(timer);
    }
}

async function admin(lib) {
    // On a failure the process exits at once, closing what is open: closing politely first can
    // wait on the very call that failed.
    const a = await lib.admin();
    const r = {};
    r.created = await step('create topic', () => a.createTopic(2));
    r.topics = await step('list topics', () => a.listTopics());
    r.partitions = await step('metadata', () => a.partitions());
    await step('producing a-0..a-29', () => lib.produce('a', 30, 2));
    // A member that commits as it reads, still in the group while it is listed and described.
    let read = 0;
    const m = await step('a member joining', () =>
        lib.member(GROUP, async () => {
            read += 1;
        }),
    );
    progress = () => `the member read ${read}`;
    await until('the member reading a-0..a-29', () => read >= 30);
    r.groups = await step('list groups', () => a.listGroups());
    r.described = await step('describe group', () => a.describeGroup());
    await step('the member leaving', () => m.stop());
    r.committed = await step('fetch offsets', () => a.committed());
    await step('set offsets', () => a.setOffset(0, 5));
    r.afterSet = await step('fetch offsets', () => a.committed());
    await step('reset offsets', () => a.reset());
    r.afterReset = await step('fetch offsets', () => a.committed());
    await step('create partitions', () => a.grow(4));
    r.partitionsAfterGrow = await step('metadata', () => a.partitions());
    r.deleted = await step('delete records', () => a.deleteRecords(0, 7));
    r.watermarks = await step('list offsets', () => a.watermarks());
    r.configs = await step('describe configs', () => a.configs());
    await step('alter configs', () => a.alterConfigs({ 'retention.ms': '3600000' }));
    r.configsAfterAlter = await step('describe configs', () => a.configs());
    if (a.incrementalAlterConfigs) {
        await step('incremental alter configs', () =>
            a.incrementalAlterConfigs({ 'retention.bytes': '1048576' }),
        );
        r.configsAfterIncremental = await step('describe configs', () => a.configs());
    }
    await step('closing', () => a.close());
    return r;
}

async function main() {
    const libs = { kafkajs, platformatic };
    const lib = Object.hasOwn(libs, LIB) ? await libs[LIB]() : die(`unknown library ${LIB}`);
    let result;
    if (SCENARIO === 'produce') {
        phase = 'producing';
        const offsets = await lib.produce(LIB, 200);
        result = { count: offsets.length, offsets };
    } else if (SCENARIO === 'consume') {
        result = { values: await consume(lib, 200) };
    } else if (SCENARIO === 'group') {
        result = await group(lib);
    } else if (SCENARIO === 'admin') {
        result = await admin(lib);
    } else {
        die(`unknown scenario ${SCENARIO}`);
    }
    clearTimeout(watchdog);
    out(result);
}

main().then(
    () => process.exit(0),
    e => die(`failed during ${phase}: ${e?.stack ?? e}`),
);
