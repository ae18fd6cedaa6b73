// A minimal messplus client for Node.js: route a prompt, generate through Triton, send feedback, read the SLA.
// The .proto is loaded at run time (no code generation):
//
//   cd examples/node && npm ci && node client.js [127.0.0.1:50051] [path/to/protos]
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const address = process.argv[2] || '127.0.0.1:50051';
const protos = process.argv[3] || path.join(__dirname, '..', '..', 'protos');
const definition = protoLoader.loadSync('messplus/v1/routing.proto', {
  includeDirs: [protos], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
});
const { RoutingService } = grpc.loadPackageDefinition(definition).messplus.v1;
const router = new RoutingService(address, grpc.credentials.createInsecure());
const within = (seconds) => ({ deadline: Date.now() + seconds * 1000 });
const unary = (method, request) => new Promise((resolve, reject) =>
  router[method](request, within(5), (err, reply) => (err ? reject(err) : resolve(reply))));

async function main() {
  // 1. Route only: which model should answer? (You then call Triton yourself.)
  const route = await unary('Route', { tenant: 'default', text: 'Which gas do plants absorb from the air?' });
  console.log(`Route    -> ${route.model} (exploration=${route.exploration}, queue=${route.queue.toFixed(3)})`);

  // 2. Generate: route, call the chosen model on Triton, stream the answer back.
  let requestId = '';
  await new Promise((resolve, reject) => {
    const stream = router.Generate({ tenant: 'default', text: 'Write a haiku about routers.' }, within(30));
    stream.on('data', (event) => {
      if (event.event === 'route') {
        requestId = event.route.request_id;
        console.log(`Generate -> routed to ${event.route.model}`);
      } else if (event.event === 'text') {
        console.log(`           text: ${JSON.stringify(event.text)}`);
      } else if (event.event === 'answer') { // exploration: another model's answer, to be labelled too
        console.log(`           also: ${event.answer.model}: ${JSON.stringify(event.answer.text)}`);
      } else if (event.event === 'done') {
        console.log(`           done: served by ${event.done.served_model}, cost ${event.done.cost_raw.toFixed(6)}`);
      }
    });
    stream.on('error', reject);
    stream.on('end', resolve);
  });

  // 3. Feedback: how satisfied was the user with the served answer? (0..1; idempotent per request)
  const fb = await unary('Feedback', { tenant: 'default', request_id: requestId, satisfaction: 1.0 });
  console.log(`Feedback -> applied=${fb.labels_applied} queue=${fb.queue.toFixed(3)}`);

  // 4. The SLA as the router sees it.
  const sla = await unary('SlaStatus', { tenant: 'default' });
  const shares = sla.models.map((m) => `${m.model}:${m.served}`).join(', ');
  console.log(`SlaStatus-> alpha=${sla.alpha} satisfaction=${sla.satisfaction.toFixed(3)} requests=${sla.requests} ` +
              `mean_cost=${sla.mean_cost_raw.toFixed(6)} ${shares}`);
}

main().then(() => router.close(), (err) => {
  console.error(`error: ${err.code !== undefined ? grpc.status[err.code] + ': ' + err.details : err}`);
  router.close();
  process.exitCode = 1;
});
