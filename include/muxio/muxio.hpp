// Umbrella header: everything public in muxio.
#pragma once

#include "muxio/config.hpp"
#include "muxio/error.hpp"
#include "muxio/events.hpp"
#include "muxio/file_object.hpp"
#include "muxio/log.hpp"
#include "muxio/selector.hpp"
#include "muxio/selectors.hpp"
