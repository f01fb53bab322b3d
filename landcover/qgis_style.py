"""The QGIS style of the vector map: a QML document (categories by class code, CORINE colours, labels by
class name) and the row of the GeoPackage's ``layer_styles`` table that makes QGIS open the layer
with it, as QGIS itself saves a default style into a GeoPackage.

Bottom floor: imports only colormap.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from colormap import CLASSES, CODES, hex_to_rgb

QGIS_VERSION = "3.28.0-Firenze"  # the QML dialect written (read by QGIS 3.x)


def _fill_symbol(index: int, code: int) -> str:
    rgb = ",".join(map(str, hex_to_rgb(CLASSES[code][1])))
    props = {"color": f"{rgb},255", "outline_color": "60,60,60,255", "outline_width": "0.1",
             "outline_width_unit": "MM", "style": "solid", "outline_style": "solid"}  # fmt: skip
    options = "".join(f'<Option name="{k}" type="QString" value="{v}"/>' for k, v in props.items())
    legacy = "".join(f'<prop k="{k}" v="{v}"/>' for k, v in props.items())
    return (
        f'<symbol type="fill" name="{index}" alpha="1" clip_to_extent="1" force_rhr="0">'
        f'<layer class="SimpleFill" enabled="1" pass="0" locked="0"><Option type="Map">{options}</Option>'
        f"{legacy}</layer></symbol>"
    )


def class_map_qml(code_field: str = "code", name_field: str = "name") -> str:
    """The QML of a polygon layer categorised by ``code_field`` and labelled by ``name_field``."""
    categories = "".join(
        f'<category value="{c}" symbol="{i}" label={quoteattr(f"{c} {CLASSES[c][0]}")} render="true"/>'
        for i, c in enumerate(CODES)
    )
    symbols = "".join(_fill_symbol(i, c) for i, c in enumerate(CODES))
    labels = (
        '<labeling type="simple"><settings calloutType="simple">'
        f'<text-style fieldName="{name_field}" fontSize="8" fontSizeUnit="Point" textColor="20,20,20,255"'
        ' isExpression="0"><text-buffer bufferDraw="1" bufferSize="0.8" bufferColor="255,255,255,255"/>'
        '</text-style><placement placement="1" fitInPolygonOnly="1"/>'
        '<rendering scaleVisibility="1" scaleMin="1" scaleMax="50000" obstacle="1"/></settings></labeling>'
    )
    return (
        f"<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        f'<qgis version="{QGIS_VERSION}" styleCategories="Symbology|Labeling" labelsEnabled="1">'
        f'<renderer-v2 type="categorizedSymbol" attr="{code_field}" forceraster="0" symbollevels="0" '
        f'enableorderby="0"><categories>{categories}</categories><symbols>{symbols}</symbols></renderer-v2>'
        f"{labels}<layerGeometryType>2</layerGeometryType></qgis>\n"
    )


def layer_styles_row(table: str, geometry_column: str, when: str) -> dict[str, object]:
    """The ``layer_styles`` row (QGIS's schema) holding ``class_map_qml`` as ``table``'s default style."""
    return {
        "f_table_catalog": "",
        "f_table_schema": "",
        "f_table_name": table,
        "f_geometry_column": geometry_column,
        "styleName": f"{table} land-cover classes",
        "styleQML": class_map_qml(),
        "styleSLD": "",
        "useAsDefault": True,
        "description": "land-cover classes: CORINE colours, labelled by class name",
        "owner": "",
        "ui": "",
        "update_time": when,
    }
