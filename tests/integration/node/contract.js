// The contract seen from Node.js: loads protos/messplus/v1/routing.proto with @grpc/proto-loader, calls every
// RPC of RoutingService with @grpc/grpc-js and prints what came back as one JSON object on stdout. The pytest
// side (test_polyglot_clients.py) asserts the values; this script only fails on transport-level surprises.
//
//   NODE_PATH=examples/node/node_modules node tests/integration/node/contract.js ADDRESS PROTOS_DIR TENANT
'use strict';
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const [address, protos, tenant] = process.argv.slice(2);
const definition = protoLoader.loadSync('messplus/v1/routing.proto', {
  includeDirs: [protos], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
});
const { RoutingService } = grpc.loadPackageDefinition(definition).messplus.v1;
const client = new RoutingService(address, grpc.credentials.createInsecure());
const within = (seconds) => ({ deadline: Date.now() + seconds * 1000 });

// A unary call as {reply} or {error: {code, details}}: refusals are answers too.
const unary = (method, request) => new Promise((resolve) =>
  client[method](request, within(10), (err, reply) =>
    resolve(err ? { error: { code: grpc.status[err.code], details: err.details } } : { reply })));

const stream = (request) => new Promise((resolve) => {
  const events = [];
  const call = client.Generate(request, within(60));
  call.on('data', (event) => events.push({ kind: event.event, [event.event]: event[event.event] }));
  call.on('error', (err) => resolve({ events, error: { code: grpc.status[err.code], details: err.details } }));
  call.on('end', () => resolve({ events }));
});

async function main() {
  const never = { exploration: 'EXPLORATION_MODE_NEVER' };
  const out = {};
  out.models = await unary('ListModels', {});
  out.route = await unary('Route', { tenant, text: 'Which gas do plants absorb from the air?', overrides: never });
  const only = out.models.reply.models[2].name;
  out.route_chat = await unary('Route', {
    tenant, request_id: 'node-chat-1', overrides: { ...never, allowed_models: [only] },
    chat: { messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Name a prime.' }] },
  });
  out.route_reused_id = await unary('Route', { tenant, request_id: 'node-chat-1', text: 'again' });
  out.route_no_prompt = await unary('Route', { tenant });
  const rid = out.route.reply.request_id;
  out.feedback = await unary('Feedback', { tenant, request_id: rid, satisfaction: 1.0 });
  out.feedback_again = await unary('Feedback', { tenant, request_id: rid, satisfaction: 1.0 });
  out.feedback_conflict = await unary('Feedback', { tenant, request_id: rid, satisfaction: 0.0 });
  out.feedback_unknown = await unary('Feedback', { tenant, request_id: 'no-such-request', satisfaction: 1.0 });
  out.generate = await stream({ tenant, text: 'Write a haiku about routers.',
                                overrides: { exploration: 'EXPLORATION_MODE_ALWAYS' },
                                sampling: { max_tokens: 64, temperature: 0.2 } });
  const route = out.generate.events[0].route;
  const labels = route.explored_models.map((model) => ({ model, satisfaction: model === route.model ? 0.0 : 1.0 }));
  out.feedback_labels = await unary('Feedback', { tenant, request_id: route.request_id, labels });
  out.generate_bad_sampling = await stream({ tenant, text: 'hi', sampling: { top_p: 1.5 } });
  out.sla = await unary('SlaStatus', { tenant });
  out.sla_unknown_tenant = await unary('SlaStatus', { tenant: 'ghost' });
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().finally(() => client.close()).catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
