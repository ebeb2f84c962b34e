// Reference for the relay benchmark: the least a zeromq.js relay can do. Binds the client-facing
// sockets of FRONT (a connection file) and moves every message to and from the kernel of BACK
// unchanged: no signature check, no re-signing (both files have the same key), no parsing.
// Whatever our supervisor costs above this is our own code; below it is the binding's floor.
//
//   node bench/relays/passthrough.cjs FRONT.json BACK.json     (touches FRONT.json.ready when up)

const fs = require('node:fs');
const zmq = require('zeromq');

const [front, back] = process.argv.slice(2).map(file => JSON.parse(fs.readFileSync(file, 'utf8')));
const endpoint = (info, channel) =>
  info.transport === 'ipc'
    ? `ipc://${info.ip}-${info[`${channel}_port`]}`
    : `tcp://${info.ip}:${info[`${channel}_port`]}`;

async function pump(from, to) {
  for await (const frames of from) {
    await to.send(frames);
  }
}

async function main() {
  for (const channel of ['shell', 'control', 'stdin']) {
    const router = new zmq.Router({ linger: 0 });
    await router.bind(endpoint(front, channel));
    const dealer = new zmq.Dealer({ linger: 0 });
    dealer.connect(endpoint(back, channel));
    void pump(router, dealer);
    void pump(dealer, router);
  }
  const xpub = new zmq.XPublisher({ linger: 0 });
  await xpub.bind(endpoint(front, 'iopub'));
  const xsub = new zmq.XSubscriber({ linger: 0 });
  xsub.connect(endpoint(back, 'iopub'));
  void pump(xpub, xsub);
  void pump(xsub, xpub);
  const hb = new zmq.Router({ linger: 0 });
  await hb.bind(endpoint(front, 'hb'));
  void (async () => {
    for await (const frames of hb) {
      await hb.send(frames);
    }
  })();
  fs.writeFileSync(`${process.argv[2]}.ready`, '');
}

void main();
