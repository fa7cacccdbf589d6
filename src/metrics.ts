import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { RelayBroker, RelayMetrics } from './relay/broker.js';
import type { ExecMetrics } from './relay/exec-service.js';
import type { SessionRegistry, RegisteredSession } from './relay/sessions.js';

/** The gateway's Prometheus metrics (one registry per gateway, so tests can run several). */
export class GatewayMetrics {
  readonly registry = new Registry();
  readonly relay: RelayMetrics;
  readonly exec: ExecMetrics;

  constructor(sources: { sessions: () => SessionRegistry<RegisteredSession>; broker: () => RelayBroker }) {
    const registers = [this.registry];
    new Gauge({
      name: 'openshell_sessions_connected',
      help: 'Supervisor control sessions currently connected',
      registers,
      collect() {
        this.set(sources.sessions().size);
      },
    });
    new Gauge({
      name: 'openshell_relays_open',
      help: 'Relay WebSockets currently open',
      registers,
      collect() {
        this.set(sources.broker().openCount);
      },
    });
    new Gauge({
      name: 'openshell_relays_idle',
      help: 'Exec relays open and kept for the next exec (included in openshell_relays_open)',
      registers,
      collect() {
        this.set(sources.broker().idleCount);
      },
    });
    new Gauge({
      name: 'openshell_relays_pending',
      help: 'Relays asked of a supervisor and not yet claimed',
      registers,
      collect() {
        this.set(sources.broker().pendingCount);
      },
    });
    const opens = new Counter({
      name: 'openshell_relay_opens_total',
      help: 'Relay opens by target and result',
      labelNames: ['target', 'result'] as const,
      registers,
    });
    const bytes = new Counter({
      name: 'openshell_relay_bytes_total',
      help: 'Bytes carried by relays, by direction',
      labelNames: ['direction'] as const,
      registers,
    });
    const inFlight = new Gauge({ name: 'openshell_execs_in_flight', help: 'Execs running now', registers });
    const duration = new Histogram({
      name: 'openshell_exec_duration_seconds',
      help: 'Exec duration as seen by the gateway, by outcome',
      labelNames: ['outcome'] as const,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800],
      registers,
    });
    this.relay = {
      opened: (target, result) => opens.inc({ target, result }),
      bytes: (direction, n) => bytes.inc({ direction }, n),
    };
    const resumes = new Counter({
      name: 'openshell_exec_resumes_total',
      help: 'Execs re-attached on a new relay after theirs was lost (DESIGN.md, Durable execs)',
      registers,
    });
    this.exec = {
      started: () => inFlight.inc(),
      resumed: () => resumes.inc(),
      finished: (ms, outcome) => {
        inFlight.dec();
        duration.observe({ outcome }, ms / 1000);
      },
    };
  }
}
