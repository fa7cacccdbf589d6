/** The TCP fault proxy lives in bench/ (the dead-relay benchmark uses it too); tests use the same code. */
export { startTcpProxy, type TcpProxy } from '../../bench/tcp-proxy.js';
