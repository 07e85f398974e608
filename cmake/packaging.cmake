# Install rules for the systemd files and the Debian package (`cpack -G DEB`
# in a build directory). Included at the end of the top-level CMakeLists.txt,
# after every other install() rule.
#
# The package holds tensorshmd and tensorshmctl, the client library, its
# headers and CMake package config, the units, the sysusers.d and tmpfiles.d
# entries, /etc/tensorshm/tensorshmd.conf (a conffile) and
# docs/operations.md; its maintainer scripts create the system user, enable
# tensorshmd.socket and reload systemd. tests/ops/test_package.py builds,
# inspects, installs and purges it.
include_guard(GLOBAL)

# Where systemd looks for units, sysusers.d and tmpfiles.d entries: systemd.pc
# knows (Debian 12 keeps units in /lib/systemd/system).
set(_tshm_unitdir /lib/systemd/system)
set(_tshm_sysusersdir /usr/lib/sysusers.d)
set(_tshm_tmpfilesdir /usr/lib/tmpfiles.d)
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(_TSHM_SYSTEMD_PC QUIET systemd)
  if(_TSHM_SYSTEMD_PC_FOUND)
    pkg_get_variable(_tshm_unitdir systemd systemdsystemunitdir)
    pkg_get_variable(_tshm_sysusersdir systemd sysusersdir)
    pkg_get_variable(_tshm_tmpfilesdir systemd tmpfilesdir)
  endif()
endif()
set(TENSORSHM_SYSTEMD_UNITDIR "${_tshm_unitdir}" CACHE PATH "Where the systemd units are installed with prefix /usr")
set(TENSORSHM_SYSUSERSDIR "${_tshm_sysusersdir}" CACHE PATH "Where the sysusers.d entry is installed with prefix /usr")
set(TENSORSHM_TMPFILESDIR "${_tshm_tmpfilesdir}" CACHE PATH "Where the tmpfiles.d entry is installed with prefix /usr")
set(TENSORSHM_CONFIG_DIR /etc/tensorshm CACHE PATH "Where tensorshmd.conf is installed with prefix /usr")
# TENSORSHM_INSTALL_SYSTEMD (the top-level CMakeLists.txt) turns the systemd files off.

set(_tshm_systemd_src "${PROJECT_SOURCE_DIR}/systemd")
set(_tshm_systemd_bin "${PROJECT_BINARY_DIR}/systemd")

if(TENSORSHM_DAEMON AND TENSORSHM_INSTALL_SYSTEMD)
  # The directories are chosen at install time from the prefix then in force:
  # for /usr (the package) the system's own (the units' directory from
  # systemd.pc, /etc/tensorshm); for any other prefix, directories inside it, so
  # that `cmake --install --prefix /opt/x` writes nothing outside /opt/x
  # (systemd also searches /usr/local/lib/systemd/system, sysusers.d and
  # tmpfiles.d). ExecStart= in the unit is rewritten to the installed binary
  # and config file. file(INSTALL) prepends $DESTDIR by itself.
  install(CODE "
    if(CMAKE_INSTALL_PREFIX STREQUAL \"/usr\")
      set(_unitdir \"${TENSORSHM_SYSTEMD_UNITDIR}\")
      set(_sysusersdir \"${TENSORSHM_SYSUSERSDIR}\")
      set(_tmpfilesdir \"${TENSORSHM_TMPFILESDIR}\")
      set(_confdir \"${TENSORSHM_CONFIG_DIR}\")
    else()
      set(_unitdir \"\${CMAKE_INSTALL_PREFIX}/lib/systemd/system\")
      set(_sysusersdir \"\${CMAKE_INSTALL_PREFIX}/lib/sysusers.d\")
      set(_tmpfilesdir \"\${CMAKE_INSTALL_PREFIX}/lib/tmpfiles.d\")
      set(_confdir \"\${CMAKE_INSTALL_PREFIX}/etc/tensorshm\")
    endif()
    set(_bindir \"${CMAKE_INSTALL_BINDIR}\")
    if(NOT IS_ABSOLUTE \"\${_bindir}\")
      set(_bindir \"\${CMAKE_INSTALL_PREFIX}/\${_bindir}\")
    endif()
    file(READ \"${_tshm_systemd_src}/tensorshmd.service\" _unit)
    string(FIND \"\${_unit}\" \"ExecStart=/usr/bin/tensorshmd --config /etc/tensorshm/tensorshmd.conf\" _at)
    if(_at LESS 0)
      message(FATAL_ERROR \"systemd/tensorshmd.service: ExecStart= no longer reads as packaging.cmake expects\")
    endif()
    string(REPLACE \"ExecStart=/usr/bin/tensorshmd --config /etc/tensorshm/tensorshmd.conf\"
                   \"ExecStart=\${_bindir}/tensorshmd --config \${_confdir}/tensorshmd.conf\" _unit \"\${_unit}\")
    file(WRITE \"${_tshm_systemd_bin}/tensorshmd.service\" \"\${_unit}\")
    file(INSTALL DESTINATION \"\${_unitdir}\" TYPE FILE
         FILES \"${_tshm_systemd_bin}/tensorshmd.service\" \"${_tshm_systemd_src}/tensorshmd.socket\")
    file(INSTALL DESTINATION \"\${_sysusersdir}\" TYPE FILE RENAME tensorshm.conf
         FILES \"${_tshm_systemd_src}/tensorshm.sysusers\")
    file(INSTALL DESTINATION \"\${_tmpfilesdir}\" TYPE FILE RENAME tensorshm.conf
         FILES \"${_tshm_systemd_src}/tensorshm.tmpfiles\")
    file(INSTALL DESTINATION \"\${_confdir}\" TYPE FILE
         FILES \"${_tshm_systemd_src}/tensorshmd.conf\")
  ")
endif()
install(FILES "${PROJECT_SOURCE_DIR}/docs/operations.md" DESTINATION "${CMAKE_INSTALL_DOCDIR}")

# --- Debian package ------------------------------------------------------------
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME tensorshm)
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
# Install with CMAKE_INSTALL_PREFIX=/usr under DESTDIR, so that the paths
# computed at install time (the unit's ExecStart=) are the installed ones.
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_INSTALL_PREFIX /usr)
set(CPACK_SET_DESTDIR ON)
set(CPACK_STRIP_FILES ON)
# One package from the default component; the Python extension is pip's job.
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_GROUPING ALL_COMPONENTS_IN_ONE)
set(CPACK_COMPONENTS_ALL Unspecified)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_NAME tensorshm)
set(TENSORSHM_PACKAGE_MAINTAINER "tensorshm maintainers <tensorshm@localhost>" CACHE STRING "Maintainer field of the .deb")
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${TENSORSHM_PACKAGE_MAINTAINER}")
set(CPACK_DEBIAN_PACKAGE_SECTION misc)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# CPack puts the summary first; this is the long description under it.
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION "tensorshmd owns a pool of shared memory (pinned for the GPUs where they
 exist) and hands named tensors between processes: readers map them
 read-only, without a copy. This package holds the daemon and its systemd
 units (socket activation, notify, watchdog), tensorshmctl, and the C++ client
 library with its headers and CMake package config.")
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS systemd)
# find_package(tensorshm COMPONENTS torch) finds libtorch for tensorshm::torch.
if(TENSORSHM_TORCH)
  set(CPACK_DEBIAN_PACKAGE_SUGGESTS libtorch-dev)
endif()
# adduser: the postinst falls back to it where systemd-sysusers is missing.
set(CPACK_DEBIAN_PACKAGE_DEPENDS adduser)
find_program(TENSORSHM_DPKG_SHLIBDEPS dpkg-shlibdeps)
if(TENSORSHM_DPKG_SHLIBDEPS)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
else()
  string(APPEND CPACK_DEBIAN_PACKAGE_DEPENDS ", libc6, libstdc++6, libgcc-s1, libsystemd0")
endif()

# Maintainer scripts and conffiles, with the systemd files they act on.
if(TENSORSHM_DAEMON AND TENSORSHM_INSTALL_SYSTEMD)
  foreach(_script postinst prerm postrm)
    configure_file("${_tshm_systemd_src}/debian/${_script}.in" "${_tshm_systemd_bin}/debian/${_script}" @ONLY)
  endforeach()
  file(WRITE "${_tshm_systemd_bin}/debian/conffiles" "${TENSORSHM_CONFIG_DIR}/tensorshmd.conf\n")
  set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    "${_tshm_systemd_bin}/debian/postinst;${_tshm_systemd_bin}/debian/prerm;${_tshm_systemd_bin}/debian/postrm;${_tshm_systemd_bin}/debian/conffiles")
  set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
endif()

# A daemon without its units (TENSORSHM_INSTALL_SYSTEMD=OFF, where libsystemd
# may be missing too) is not what the package promises: cpack refuses to make
# the .deb from such a build, before anything is packed.
if(TENSORSHM_DAEMON AND NOT TENSORSHM_INSTALL_SYSTEMD)
  file(WRITE "${_tshm_systemd_bin}/refuse-deb.cmake"
    "message(FATAL_ERROR \"cpack: this build has TENSORSHM_INSTALL_SYSTEMD=OFF: its tensorshmd comes without the \"
    \"systemd units (and may lack libsystemd, so it would never send READY=1), and the .deb must carry both. \"
    \"Configure a build for the package with -DTENSORSHM_INSTALL_SYSTEMD=ON (needs libsystemd-dev).\")\n")
  set(CPACK_PRE_BUILD_SCRIPTS "${_tshm_systemd_bin}/refuse-deb.cmake")
endif()

include(CPack)
