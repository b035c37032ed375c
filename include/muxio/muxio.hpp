// Umbrella header: everything public in muxio.
#pragma once

#include "muxio/awaitables.hpp"
#include "muxio/combinators.hpp"
#include "muxio/config.hpp"
#include "muxio/error.hpp"
#include "muxio/events.hpp"
#include "muxio/file_object.hpp"
#include "muxio/log.hpp"
#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "muxio/run.hpp"
#include "muxio/selector.hpp"
#include "muxio/selectors.hpp"
#include "muxio/task.hpp"
#include "muxio/task_group.hpp"
