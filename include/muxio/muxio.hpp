// Umbrella header: everything public in muxio.
#pragma once

/// \mainpage muxio
///
/// I/O multiplexing for C++20 on Unix, in layers, each using only the one
/// below it:
///
/// - **Selectors** (muxio/selector.hpp, muxio/selectors.hpp): Python's
///   `selectors` in C++. muxio::BaseSelector and the named selectors, one per
///   kernel mechanism; muxio::DefaultSelector picks the best one.
/// - **Reactor** (muxio/reactor.hpp): muxio::Reactor, an event loop of fd
///   callbacks, timers, thread-safe wakeups and signal handlers;
///   muxio::ReactorGroup (muxio/reactor_group.hpp) runs one per thread.
/// - **Coroutines** (muxio/task.hpp, muxio/awaitables.hpp, muxio/run.hpp,
///   muxio/combinators.hpp, muxio/task_group.hpp): muxio::Task, awaits of
///   readiness and time, spawn(), timeouts and structured concurrency.
/// - **Sockets** (muxio/net.hpp): addresses, TCP, UDP and Unix-domain sockets
///   with awaitable operations, and name resolution off the loop.
/// - **Transports** (muxio/transport.hpp, muxio/server.hpp): buffered stream
///   transports with back-pressure for callback protocols, and a server with
///   an accept loop, a connection limit and per-connection timeouts.
/// - **TLS** (muxio/tls.hpp, the separate library muxio::tls, built when
///   OpenSSL is found: MUXIO_HAS_TLS): muxio::TlsContext, muxio::TlsStream
///   over any stream socket, and muxio::TlsEngine, the state machine without
///   I/O. Not included by this header: include it and link muxio::tls.
///
/// Errors are the types of muxio/error.hpp and the standard exceptions; each
/// class and function says which it throws. `#include "muxio/muxio.hpp"`
/// includes everything.

/// \namespace muxio
/// Everything public in muxio. Names in muxio::detail (and the headers in
/// muxio/detail/) are implementation, and may change without notice.

#include "muxio/awaitables.hpp"
#include "muxio/combinators.hpp"
#include "muxio/config.hpp"
#include "muxio/error.hpp"
#include "muxio/events.hpp"
#include "muxio/file_object.hpp"
#include "muxio/log.hpp"
#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "muxio/reactor_group.hpp"
#include "muxio/run.hpp"
#include "muxio/selector.hpp"
#include "muxio/selectors.hpp"
#include "muxio/server.hpp"
#include "muxio/task.hpp"
#include "muxio/task_group.hpp"
#include "muxio/transport.hpp"
